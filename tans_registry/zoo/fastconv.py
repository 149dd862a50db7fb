"""Depthwise convolutions that skip the kernel taps which only ever see padding.

At the zoo's 32-pixel input the last stages of an OFA MobileNetV3 run on 2x2 and 1x1 maps with 5x5 and 7x7
depthwise kernels ("same" padding). Every output pixel there reads mostly zeros of the padding, and
PyTorch's CPU (oneDNN) depthwise kernel pays for each of them: on a 2-core AMD EPYC, one torch thread, the
7x7 layers on 2x2 and 1x1 maps took 72% of the largest subnet's forward pass (1.8 s of 2.5 s for 500
images, torch.profiler; BENCHMARKS.md has the before and after). A tap that never reaches a real pixel
adds exactly zero, so the same convolution with the kernel's outer rings cut off (and the padding reduced by
as much) computes the same output, up to the order of the floating-point sums, and the same gradients
for every weight (the cut taps' gradient is zero either way).

:func:`crop` says how many rings a kernel can lose on a given map; :func:`depthwise` is the convolution
that uses it. :func:`install` switches every depthwise convolution of a module to it in place (the class
of each layer changes; its parameters, buffers and state-dict keys stay as they are), for the static
subnets (``nn.Conv2d``) and for the supernet's elastic layers (the ``ofa`` package's
``DynamicSeparableConv2d``); both new classes live at module level, so modules still pickle. FLOPs are
counted and ONNX graphs exported on the plain layers (:func:`plain`): a network's FLOPs tag is its
architecture's, and its ONNX graph is the one it always was.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from ofa.imagenet_classification.elastic_nn.modules.dynamic_op import DynamicSeparableConv2d
from ofa.utils import MyConv2d, get_same_padding
from torch import nn


def crop(kernel: int, padding: int, stride: int, size: int) -> int:
    """Rings that can be cut off each side of a ``kernel``-wide tap range, for a map of ``size`` pixels with
    ``padding`` and ``stride`` (dilation 1): the taps outside ``[c, kernel - c)`` never reach a real pixel."""
    if size < 1 or padding < 0 or stride < 1:
        return 0
    n_out = (size + 2 * padding - kernel) // stride + 1
    if n_out < 1:
        return 0
    first = max(0, padding - (n_out - 1) * stride)      # lowest tap some output pixel reads a real pixel with
    last = min(kernel - 1, padding + size - 1)          # highest such tap
    return max(0, min(first, kernel - 1 - last, padding))


def depthwise(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int, groups: int) -> torch.Tensor:
    """``F.conv2d(x, weight, None, stride, padding, 1, groups)`` for a square kernel, computed without
    the taps that only see padding."""
    k = int(weight.shape[-1])
    c = min(crop(k, padding, stride, int(x.shape[-2])), crop(k, padding, stride, int(x.shape[-1])))
    if c == 0:
        return F.conv2d(x, weight, None, stride, padding, 1, groups)
    w = weight[:, :, c:k - c, c:k - c]
    if w.shape[-1] == 1 and padding == c and stride == 1 and groups == x.shape[1] == w.shape[0]:
        return x * w.reshape(1, -1, 1, 1)  # a 1x1 depthwise kernel is a per-channel scale
    return F.conv2d(x, w.contiguous(), None, stride, padding - c, 1, groups)


def _is_depthwise(m: nn.Conv2d) -> bool:
    k = m.kernel_size
    return (m.groups > 1 and m.groups == m.in_channels == m.out_channels and k[0] == k[1] > 1
            and m.dilation == (1, 1) and m.stride[0] == m.stride[1] and m.padding_mode == "zeros"
            and isinstance(m.padding, tuple) and m.padding[0] == m.padding[1] > 0 and m.bias is None)


class CroppedDepthwiseConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose forward pass is :func:`depthwise` (what :func:`install` turns layers into)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return depthwise(x, self.weight, self.stride[0], self.padding[0], self.groups)


class CroppedDynamicSeparableConv2d(DynamicSeparableConv2d):
    """The supernet's elastic depthwise layer with :func:`depthwise` as its convolution (the active kernel
    is derived from the largest exactly as the ``ofa`` layer derives it)."""

    def forward(self, x, kernel_size=None):  # noqa: D102
        if kernel_size is None:
            kernel_size = self.active_kernel_size
        if isinstance(self.conv, MyConv2d):  # weight-standardised variants: the package's own path
            return super().forward(x, kernel_size)
        channels = x.size(1)
        filters = self.get_active_filter(channels, kernel_size).contiguous()
        return depthwise(x, filters, self.stride, get_same_padding(kernel_size), channels)


# False: :func:`install` leaves every layer as it is. Only the benchmark scripts' ``--plain-depthwise`` turns it
# off, to measure the same work with the plain layers: they set TANS_PLAIN_DEPTHWISE=1, which the worker
# processes they spawn inherit and read here when they import this module.
ENABLED = os.environ.get("TANS_PLAIN_DEPTHWISE", "") != "1"


def use_plain_layers() -> None:
    """From now on :func:`install` changes nothing, in this process and in the processes it spawns (the
    benchmark scripts' ``--plain-depthwise``)."""
    global ENABLED
    os.environ["TANS_PLAIN_DEPTHWISE"] = "1"
    ENABLED = False


def install(module: nn.Module) -> nn.Module:
    """Switch every depthwise convolution of ``module`` to :func:`depthwise`, in place; returns it."""
    if not ENABLED:
        return module
    for m in module.modules():
        if type(m) is nn.Conv2d and _is_depthwise(m):
            m.__class__ = CroppedDepthwiseConv2d
        elif type(m) is DynamicSeparableConv2d and m.dilation == 1:
            m.__class__ = CroppedDynamicSeparableConv2d
    return module


_PLAIN = {CroppedDepthwiseConv2d: nn.Conv2d, CroppedDynamicSeparableConv2d: DynamicSeparableConv2d}


@contextmanager
def swapped_classes(module: nn.Module, mapping: dict) -> Iterator[nn.Module]:
    """Within the block, every submodule whose exact class is a key of ``mapping`` has that value as its class
    (parameters, buffers and state-dict keys unchanged); the classes are restored after."""
    swapped = [(m, type(m)) for m in module.modules() if type(m) in mapping]
    for m, cls in swapped:
        m.__class__ = mapping[cls]
    try:
        yield module
    finally:
        for m, cls in swapped:
            m.__class__ = cls


def plain(module: nn.Module):
    """Within the block, ``module``'s cut layers are the plain ones again (every tap computed), e.g. to count
    a network's FLOPs the conventional way, whatever the kernel implementation skips; restored after."""
    return swapped_classes(module, _PLAIN)
