"""The ``python_function`` loader of every ONNX export (``tans-onnx.*``), shipped inside the model as its
own code (``code/tans_onnx_loader.py``): standalone, it imports only numpy and onnxruntime, so the model
loads wherever its requirements are installed, without this package.

MLflow's own onnx loader asks onnxruntime for the CUDA provider whenever the installed onnxruntime lists
it, and onnxruntime-gpu lists it on every machine: where no CUDA driver is present, each load printed a red
error-level message ("Failed to load library ... libcuda") before falling back to the CPU. This loader asks
for CUDA only when the CUDA driver library loads, and answers in the product's one output contract:
``predict(images)`` -> ``{"logits": [N, classes], "probabilities": [N, classes]}`` (uint8 images
``[N, H, W, 3]``; a pandas DataFrame of one column of images is accepted too, as MLflow's scoring server
may hand one over). The ``onnx`` flavour stays in the MLmodel for ``mlflow.onnx.load_model`` and Triton.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np


def cuda_driver_present() -> bool:
    """Whether the CUDA driver library loads (what onnxruntime's CUDA provider needs first)."""
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def providers() -> list[str]:
    import onnxruntime as ort

    wanted = ["CUDAExecutionProvider"] if cuda_driver_present() and os.environ.get("TANS_ONNX_DEVICE") != "cpu" else []
    return [p for p in wanted if p in ort.get_available_providers()] + ["CPUExecutionProvider"]


class OnnxClassifier:
    def __init__(self, path: str):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(path, sess_options=opts, providers=providers())
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def predict(self, model_input, params=None) -> dict:
        if isinstance(model_input, dict):
            model_input = model_input.get(self.input, next(iter(model_input.values())))
        if hasattr(model_input, "to_numpy") and hasattr(model_input, "columns"):  # a DataFrame of images
            model_input = np.stack([np.asarray(v) for v in model_input.iloc[:, 0]])
        x = np.asarray(model_input)
        if x.dtype != np.uint8:
            x = x.astype(np.uint8)
        return dict(zip(self.outputs, self.session.run(self.outputs, {self.input: x})))


def _load_pyfunc(path: str) -> OnnxClassifier:
    """MLflow's entry point: ``path`` is the model's ONNX file."""
    return OnnxClassifier(path)
