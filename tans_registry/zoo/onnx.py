"""The project's one call into the ONNX exporter, and onnxruntime sessions.

``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``: the dynamo exporter needs
onnxscript, which is not a dependency), opset 17, a dynamic batch axis. Sessions take CUDA first when
onnxruntime has it and a GPU answers, else the CPU provider.

The ``ofa`` package writes h-swish as ``x * relu6(x + 3) / 6``, h-sigmoid as ``relu6(x + 3) / 6`` and every
global average pool (squeeze-and-excitation, the head) as two means; exported as they are, these become four
elementwise nodes per activation and two ReduceMean nodes per pool, which onnxruntime's CPU provider runs
outside its blocked (NCHWc) layout: onnxruntime's profiler gave them 70% of the largest subnet's time at
batch 64 (BENCHMARKS.md). :func:`export_onnx` exports them as the single operators they are (HardSwish,
HardSigmoid, GlobalAveragePool: the same functions), which onnxruntime fuses into the convolutions or runs
in that layout. The module itself is left as it was, and eager PyTorch keeps the package's layers.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from ofa.utils.pytorch_modules import Hsigmoid, Hswish, MyGlobalAvgPool2d, SEModule
from torch import nn

OPSET = 17


class _HardSwish(Hswish):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.hardswish(x)  # x * relu6(x + 3) / 6 in one operator


class _HardSigmoid(Hsigmoid):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.hardsigmoid(x)  # relu6(x + 3) / 6 in one operator


class _PooledSE(SEModule):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x * self.fc(F.adaptive_avg_pool2d(x, 1))  # the mean over H and W, as one GlobalAveragePool


class _GlobalAvgPool(MyGlobalAvgPool2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = F.adaptive_avg_pool2d(x, 1)
        return y if self.keep_dim else y.flatten(1)


_AS_EXPORTED = {Hswish: _HardSwish, Hsigmoid: _HardSigmoid, SEModule: _PooledSE, MyGlobalAvgPool2d: _GlobalAvgPool}


# False only in `scripts/bench_deploy.py --ofa-activations`: export the package's layers as they are, to compare.
SINGLE_OPERATORS = True


def exported_layers(module: nn.Module):
    """Within the block, ``module``'s h-swish, h-sigmoid and global-average-pool layers compute the same
    functions as single operators (what :func:`export_onnx` traces); restored after."""
    from .fastconv import swapped_classes

    return swapped_classes(module, _AS_EXPORTED if SINGLE_OPERATORS else {})


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str = "input",
                output_name: str | tuple[str, ...] = "output") -> Path:
    """Write ``module`` (eval mode) as ONNX at ``path``, batch axis dynamic. The depthwise layers are
    exported plain (:func:`.fastconv.plain`): the exporter folds each batch norm into its convolution and
    the int8 quantiser finds per-channel convolution weights, as before the cut layers existed (a cut
    kernel is a slice, which the exporter does not fold; onnxruntime's CPU provider ran both graphs at
    the same speed at batch 64, BENCHMARKS.md). Activations and pools are exported as single operators
    (:func:`exported_layers`)."""
    from .fastconv import plain

    module.eval()
    names = (output_name,) if isinstance(output_name, str) else tuple(output_name)  # one per output of the module
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), plain(module), exported_layers(module):
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[input_name], output_names=list(names),
                          dynamic_axes={input_name: {0: "batch"}} | {n: {0: "batch"} for n in names})
    return path


def providers(device: str = "auto") -> list[str]:
    """onnxruntime execution providers to ask for, best first: CUDA when available (``auto``/``cuda``),
    then the CPU provider."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    out = []
    # onnxruntime-gpu lists CUDA even without a GPU (and logs errors when it fails to load): ask for it only
    # when a CUDA device answers
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available and torch.cuda.is_available():
        out.append("CUDAExecutionProvider")
    elif device == "cuda":
        from ..errors import TansError

        raise TansError("--device cuda: no CUDA device is available to onnxruntime here; use --device auto or cpu",
                        code="NO_CUDA")
    return out + ["CPUExecutionProvider"]


def session(model, device: str = "auto", threads: int | None = None):
    """An onnxruntime ``InferenceSession`` on ``model`` (a path or serialized bytes); ``session.get_providers()``
    tells which providers it got (a CUDA provider without a GPU falls back to the CPU)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: a missing CUDA library is reported by the fallback, not by noise
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(model) if isinstance(model, Path) else model, sess_options=opts,
                                providers=providers(device))
