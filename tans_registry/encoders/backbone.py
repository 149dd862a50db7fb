"""The feature backbone of the query encoder.

TANS used an ImageNet ResNet-18; no such weights exist offline here, so the backbone is the project's
own small CNN, trained on the meta-training datasets only (pooled, one joint head; never on validation
or held-out datasets) and registered as ``tans-backbone`` (an MLflow model: ``encoders.flavour``).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import ImageDataset
from ..errors import ConfigError
from ..device import batch_on
from ..device import resolve as resolve_device
from ..zoo.tensors import DEFAULT_MEAN, DEFAULT_STD, random_crop, to_tensor

FEATURE_DIM = 256


class SmallBackbone(nn.Module):
    """Four conv-BN-ReLU-pool stages (32, 64, 128, 256 channels; ~15 M multiply-adds at 32x32), global
    average pooling -> 256-d."""

    def __init__(self, n_classes: int = 0):
        super().__init__()
        layers, c_in = [], 3
        for c_out in (32, 64, 128, FEATURE_DIM):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(FEATURE_DIM, n_classes) if n_classes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.head(h) if self.head is not None else h


def train_backbone(datasets: list[ImageDataset], epochs: float = 2.0, seed: int = 0, lr: float = 0.05,
                   batch_size: int = 128, max_per_dataset: int = 3000, progress=None,
                   device: str | None = "auto") -> SmallBackbone:
    """Train on the given datasets pooled (labels offset per dataset), on ``device``; returns the headless
    backbone, on the CPU."""
    if not datasets:
        raise ConfigError("the backbone needs at least one meta-training dataset")
    rng = np.random.default_rng(seed)
    xs, ys, offset = [], [], 0
    for ds in datasets:
        keep = np.sort(rng.permutation(len(ds.x_train))[:max_per_dataset])
        xs.append(ds.x_train[keep])
        ys.append(ds.y_train[keep] + offset)
        offset += ds.n_classes
    x, y = np.concatenate(xs), np.concatenate(ys)
    torch.manual_seed(seed)
    net = SmallBackbone(n_classes=offset).to(resolve_device(device))
    steps = max(1, int(round(epochs * math.ceil(len(x) / batch_size))))
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    net.train()
    step = 0
    while step < steps:
        for start in range(0, len(x), batch_size):
            if step >= steps:
                break
            idx = rng.permutation(len(x))[:batch_size] if start == 0 else rng.integers(0, len(x), batch_size)
            xb, yb = batch_on(net, to_tensor(random_crop(x[idx], 2, rng), DEFAULT_MEAN, DEFAULT_STD),
                              torch.from_numpy(y[idx]))
            loss = nn.functional.cross_entropy(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if progress:
                progress(1)
    net.head = None
    return net.to("cpu").eval()


@torch.no_grad()
def extract_features(backbone: nn.Module, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    backbone.eval()
    out = [backbone(batch_on(backbone, to_tensor(x[s:s + batch_size], DEFAULT_MEAN, DEFAULT_STD))).cpu().numpy()
           for s in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, FEATURE_DIM), np.float32)


def sample_per_class(ds: ImageDataset, k: int, seed: int) -> np.ndarray:
    """Indices of up to ``k`` seeded training images per class (the query encoder's input set)."""
    rng = np.random.default_rng(seed)
    idx = [rng.permutation(np.flatnonzero(ds.y_train == c))[:k] for c in range(ds.n_classes)]
    return np.sort(np.concatenate(idx))


def save_backbone(net: SmallBackbone, folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "backbone.safetensors"))
    (folder / "backbone.json").write_text('{"name": "small-cnn", "feature_dim": %d}' % FEATURE_DIM)
    return folder


def load_backbone(folder: Path) -> SmallBackbone:
    from safetensors.torch import load_file

    net = SmallBackbone()
    net.load_state_dict(load_file(str(folder / "backbone.safetensors")))
    return net.eval()
