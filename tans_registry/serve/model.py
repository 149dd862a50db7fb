"""An exported network, ready to answer: one onnxruntime session (CUDA then CPU, by availability), its
metadata (classes, input size), input checks, and a batcher that merges concurrent requests."""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TansError
from ..export.onnx import INPUT, OUTPUT, read_metadata
from ..registry import models as registry_models
from ..zoo.onnx import session


class BadInput(ValueError):
    """A request the model cannot take (a 4xx, never a crash)."""


def onnx_file(model_uri: str) -> Path:
    """The .onnx file behind ``model_uri``: a local .onnx path, or an MLflow model (``models:/...``)."""
    path = Path(model_uri)
    if path.suffix == ".onnx" and path.is_file():
        return path
    if "://" not in model_uri and not model_uri.startswith("models:/"):
        raise TansError(f"{model_uri} is neither an .onnx file nor a model URI: pass e.g. "
                        "models:/tans-onnx.<dataset>@champion (`tans export` makes one)", code="SERVE_MODEL")
    folder = registry_models.download_uri(model_uri)
    found = sorted(folder.rglob("*.onnx"))
    if not found:
        raise TansError(f"{model_uri} holds no .onnx file: serve an export (models:/tans-onnx.<dataset>@champion; "
                        "`tans export MODEL_URI` makes one)", code="SERVE_MODEL")
    return found[0]


@dataclass
class OnnxModel:
    path: Path
    name: str
    classes: list
    input_size: int
    session: object

    @classmethod
    def load(cls, model_uri: str, device: str = "auto", name: str | None = None) -> "OnnxModel":
        path = onnx_file(model_uri)
        meta = read_metadata(path)
        if "classes" not in meta or "input_size" not in meta:
            raise TansError(f"{model_uri} is not an export of this product (its metadata_props lack classes and "
                            "input_size): export it with `tans export`", code="SERVE_MODEL")
        default = model_uri.split("/")[1].split("@")[0] if model_uri.startswith("models:/") else path.stem
        return cls(path=path, name=name or default, classes=list(meta["classes"]), input_size=int(meta["input_size"]),
                   session=session(path, device=device))

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def check(self, images) -> np.ndarray:
        """``images`` as uint8 ``[N, S, S, 3]``, or :class:`BadInput` saying what was expected."""
        s = self.input_size
        try:
            x = np.asarray(images)
        except (ValueError, TypeError) as exc:
            raise BadInput(f"images must be a rectangular array [N, {s}, {s}, 3]: {exc}") from None
        if x.size == 0:
            raise BadInput(f"the batch is empty: send at least one image [N, {s}, {s}, 3]")
        if x.ndim == 3 and x.shape == (s, s, 3):
            x = x[None]
        if x.ndim != 4 or x.shape[1:] != (s, s, 3):
            raise BadInput(f"images must have shape [N, {s}, {s}, 3] (uint8 pixels); got {list(x.shape)}")
        if x.dtype == np.uint8:
            return x
        if x.dtype.kind not in "iuf" or not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 255 \
                or not np.all(x == np.round(x)):
            raise BadInput(f"pixels must be integers 0..255 (uint8); got dtype {x.dtype}"
                           + (f" with values {x.min()}..{x.max()}" if x.dtype.kind in "iuf" and x.size else ""))
        return x.astype(np.uint8)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: x})[0]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


class Batcher:
    """Concurrent requests merged into one session call: a worker takes the first waiting request, then
    whatever else arrives within ``wait_ms`` up to ``max_batch`` images, runs them together and hands
    each request its rows."""

    def __init__(self, model: OnnxModel, max_batch: int = 64, wait_ms: float = 2.0):
        self.model, self.max_batch, self.wait = model, max_batch, wait_ms / 1000.0
        self.jobs: queue.Queue = queue.Queue()
        self.batches = 0  # session calls made (for the tests and the figures)
        self._thread = threading.Thread(target=self._work, name="tans-batcher", daemon=True)
        self._thread.start()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        done = threading.Event()
        slot: dict = {}
        self.jobs.put((x, done, slot))
        done.wait()
        if "error" in slot:
            raise slot["error"]
        return slot["logits"]

    def _work(self) -> None:
        while True:
            first = self.jobs.get()
            group, n = [first], len(first[0])
            while n < self.max_batch:
                try:
                    job = self.jobs.get(timeout=self.wait)
                except queue.Empty:
                    break
                group.append(job)
                n += len(job[0])
            try:
                out = self.model.logits(np.concatenate([g[0] for g in group]))
                self.batches += 1
                start = 0
                for x, done, slot in group:
                    slot["logits"] = out[start:start + len(x)]
                    start += len(x)
                    done.set()
            except Exception as exc:  # noqa: BLE001  the requests get the error, the worker lives on
                for _, done, slot in group:
                    slot["error"] = exc
                    done.set()
