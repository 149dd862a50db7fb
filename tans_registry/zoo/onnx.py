"""The project's one call into the ONNX exporter, and onnxruntime sessions.

``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``: the dynamo exporter needs
onnxscript, which is not a dependency), opset 17, a dynamic batch axis. Sessions take CUDA first when
onnxruntime has it and a GPU answers, else the CPU provider.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

OPSET = 17


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str = "input",
                output_name: str = "output") -> Path:
    """Write ``module`` (eval mode) as ONNX at ``path``, batch axis dynamic. The depthwise layers are
    exported plain (:func:`.fastconv.plain`): the exporter folds each batch norm into its convolution and
    the int8 quantiser finds per-channel convolution weights, as before the cut layers existed (a cut
    kernel is a slice, which the exporter does not fold; onnxruntime's CPU provider ran both graphs at
    the same speed at batch 64, BENCHMARKS.md)."""
    from .fastconv import plain

    module.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), plain(module):
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})
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
