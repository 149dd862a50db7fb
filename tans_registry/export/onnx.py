"""A network as a deployable ONNX graph: raw pixels in, logits out.

The graph takes uint8 ``images [N, H, W, 3]`` (the batch axis dynamic) and does the preprocessing
itself (scale to [0, 1], normalise with the network's mean and std, NHWC -> NCHW), so a client sends
raw pixels. ``metadata_props`` carry the class names, input size, mean, std and the source model URI.
Every export is checked in this order: ``onnx.checker`` (full check), then parity against the PyTorch
model on real images (max abs logit difference and top-1 agreement); a failing export is refused.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import TansError
from ..zoo.onnx import export_onnx, session
from ..zoo.tensors import to_tensor
from .config import MIN_PARITY_IMAGES, PARITY_TOLERANCE

INPUT, OUTPUT, PROBS = "images", "logits", "probabilities"
# The one output contract of every classifier the product registers or serves (README "Outputs"): for uint8
# images [N, H, W, 3], named "logits" and "probabilities" (softmax of the logits), [N, classes] each, the class
# names in the model's metadata ("classes"), in the order of the columns.
OUTPUTS = (OUTPUT, PROBS)


class WithPreprocessing(nn.Module):
    """``module`` behind its own preprocessing: uint8 NHWC in, logits and probabilities out."""

    def __init__(self, module: nn.Module, mean, std):
        super().__init__()
        self.module = module.eval()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        logits = self.module((x - self.mean) / self.std)
        return logits, torch.softmax(logits, dim=1)


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float
    top1_agreement: float
    n_images: int
    # the largest difference allowed: PARITY_TOLERANCE, or four times PyTorch's own float32 error (against its float64
    # run) where the network's float32 arithmetic is coarser than that (a head folded from a linear probe adds
    # large terms that cancel: its logits carry ~1e-4 of rounding in either runtime)
    allowed: float = PARITY_TOLERANCE

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.allowed and self.top1_agreement == 1.0


def metadata(network: dict, source_uri: str) -> dict[str, str]:
    """The ``metadata_props`` of an export (all strings, as ONNX wants)."""
    return {"classes": json.dumps(list(network["classes"]), ensure_ascii=False),
            "input_size": str(int(network["input_size"])), "mean": json.dumps(list(network["mean"])),
            "std": json.dumps(list(network["std"])), "source_model_uri": source_uri,
            "input": f"{INPUT}: uint8 [N, H, W, 3] raw pixels", "output": f"{OUTPUT}, {PROBS}: float32 [N, classes] each",
            "producer": "tans-registry"}


def read_metadata(path: Path) -> dict:
    """``metadata_props`` of an ONNX file, with classes, mean and std decoded."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    for key in ("classes", "mean", "std"):
        if key in props:
            props[key] = json.loads(props[key])
    if "input_size" in props:
        props["input_size"] = int(props["input_size"])
    return props


def to_onnx(module: nn.Module, network: dict, source_uri: str, path: Path) -> Path:
    """Export ``module`` with its preprocessing to ``path``, metadata written, full ``onnx.checker`` run."""
    import onnx

    size = int(network["input_size"])
    wrapper = WithPreprocessing(module, network["mean"], network["std"])
    export_onnx(wrapper, torch.zeros(1, size, size, 3, dtype=torch.uint8), path, INPUT, OUTPUTS)
    model = onnx.load(str(path))
    for key, value in metadata(network, source_uri).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise TansError(f"the ONNX export of {source_uri} fails onnx.checker: {str(exc).splitlines()[0]}. "
                        "Nothing was registered; report it with the model URI", code="EXPORT_INVALID") from exc
    return path


@torch.no_grad()
def parity(path: Path, module: nn.Module, network: dict, images: np.ndarray) -> Parity:
    """onnxruntime (CPU provider) against the PyTorch module on ``images`` (uint8 NHWC)."""
    if len(images) < MIN_PARITY_IMAGES:
        raise TansError(f"the parity check needs at least {MIN_PARITY_IMAGES} images; the dataset gave "
                        f"{len(images)}. Pass a larger dataset with --data", code="EXPORT_PARITY")
    sess = session(Path(path), device="cpu")
    got = np.concatenate([sess.run([OUTPUT], {INPUT: images[i:i + 64]})[0] for i in range(0, len(images), 64)])
    module.eval()
    batches = [to_tensor(images[i:i + 64], network["mean"], network["std"]) for i in range(0, len(images), 64)]
    want = np.concatenate([module(x).numpy() for x in batches])
    exact = copy.deepcopy(module).double()  # the same function in float64: how exact float32 can be here
    own = float(np.abs(want - np.concatenate([exact(x.double()).numpy() for x in batches])).max())
    return Parity(max_abs_diff=float(np.abs(got - want).max()),
                  top1_agreement=float((got.argmax(1) == want.argmax(1)).mean()), n_images=len(images),
                  allowed=max(PARITY_TOLERANCE, 4.0 * own))


def check_parity(result: Parity, source_uri: str) -> None:
    if not result.ok:
        raise TansError(f"the ONNX export of {source_uri} disagrees with PyTorch on {result.n_images} images (max abs "
                        f"logit difference {result.max_abs_diff:.2e}, allowed {result.allowed:.1e}; top-1 agreement "
                        f"{result.top1_agreement:.1%}, required 100%). Nothing was registered", code="EXPORT_PARITY")
