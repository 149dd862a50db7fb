"""Measuring one zoo network: batch-norm recalibration, accuracy, size, FLOPs, functional embedding."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..device import batch_on
from .tensors import batches, to_tensor

PROBE_SHAPE = (8, 3)  # probe batch: 8 seeded N(0, 1) images, 3 channels, at the zoo's input size


def n_params(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def count_flops(module: nn.Module, input_size: int) -> int:
    """FLOPs of one forward pass on one image, counted by ``torch.utils.flop_counter`` (2 per MAC), the
    conventional way: every kernel tap of every convolution, padding included, on the plain layers
    (:func:`.fastconv.plain`), so the figure is the architecture's, not the kernel implementation's."""
    from torch.utils.flop_counter import FlopCounterMode

    from .fastconv import plain

    was_training = module.training
    module.eval()
    with torch.no_grad(), plain(module), FlopCounterMode(display=False) as counter:
        module(batch_on(module, torch.zeros(1, 3, input_size, input_size)))
    module.train(was_training)
    return int(counter.get_total_flops())


@torch.no_grad()
def recalibrate_bn(module: nn.Module, x: np.ndarray, mean, std, batch_size: int = 250) -> None:
    """Reset every batch-norm layer's statistics and re-estimate them on ``x`` (exact average)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
    module.train()
    starts = list(range(0, len(x), batch_size))
    if len(starts) > 1 and len(x) - starts[-1] == 1:  # a last batch of one image has no batch statistics (a 1x1
        starts.pop()                                  # map fails in training mode): it joins the batch before
    for i, s in enumerate(starts):
        module(batch_on(module, to_tensor(x[s:starts[i + 1] if i + 1 < len(starts) else len(x)], mean, std)))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    module.eval()


@torch.no_grad()
def accuracy(module: nn.Module, x: np.ndarray, y: np.ndarray, mean, std, batch_size: int = 500) -> float:
    module.eval()
    correct = 0
    for start, xb in enumerate(batches(x, batch_size)):
        pred = module(batch_on(module, to_tensor(xb, mean, std))).argmax(1).cpu().numpy()
        correct += int((pred == y[start * batch_size : start * batch_size + len(xb)]).sum())
    return correct / max(len(y), 1)


def penultimate(subnet: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The activation feeding the classifier of an OFA MobileNetV3 subnet (the feature-mix output)."""
    h = subnet.first_conv(x)
    for block in subnet.blocks:
        h = block(h)
    h = subnet.final_expand_layer(h)
    h = h.mean(3, keepdim=True).mean(2, keepdim=True)
    h = subnet.feature_mix_layer(h)
    return h.flatten(1)


def probe_input(input_size: int, seed: int) -> torch.Tensor:
    """The fixed probe batch behind every functional embedding (same seed -> same tensor)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*PROBE_SHAPE, input_size, input_size, generator=g)


@torch.no_grad()
def functional_embedding(subnet: nn.Module, input_size: int, seed: int) -> np.ndarray:
    """Mean penultimate activation of the subnet (eval mode) over the seeded probe batch."""
    subnet.eval()
    return penultimate(subnet, batch_on(subnet, probe_input(input_size, seed))).mean(0).cpu().numpy().astype(np.float32)
