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
from ..registry import client as registry_client
from ..registry.names import parse_model_uri
from ..zoo.onnx import session


class BadInput(ValueError):
    """A request the model cannot take (a 4xx, never a crash)."""


def onnx_file(model_uri: str) -> Path:
    """The .onnx file behind ``model_uri``: a local .onnx path, or an MLflow model (``models:/...``)."""
    return _onnx_file(model_uri)[0]


def _onnx_file(model_uri: str) -> tuple[Path, str | None]:
    """``(the .onnx file, the registered version it is of, or None)``."""
    from ..registry import integrity

    path = Path(model_uri)
    if path.suffix == ".onnx" and path.is_file():
        return path, None
    if "://" not in model_uri and not model_uri.startswith("models:/"):
        raise TansError(f"{model_uri} is neither an .onnx file nor a model URI: pass e.g. "
                        "models:/tans-onnx.<dataset>@champion (`tans export` makes one)", code="SERVE_MODEL")
    with registry_client.wrapped("download a model", "check the URI (`mlflow ui` lists the models and their versions)",
                                   also=(OSError,)):
        folder, version = integrity.download_version(model_uri)
    found = sorted(folder.rglob("*.onnx"))
    if not found:
        raise TansError(f"{model_uri} holds no .onnx file: serve an export (models:/tans-onnx.<dataset>@champion; "
                        "`tans export MODEL_URI` makes one)", code="SERVE_MODEL")
    return found[0], version


@dataclass
class OnnxModel:
    path: Path
    name: str
    classes: list
    input_size: int
    session: object
    version: str = "1"         # the registered version served (1 for a plain file)

    @classmethod
    def load(cls, model_uri: str, device: str = "auto", name: str | None = None) -> "OnnxModel":
        path, version = _onnx_file(model_uri)
        try:
            meta = read_metadata(path)
            sess = session(path, device=device)
        except TansError:
            raise
        except Exception as exc:  # onnx's DecodeError, onnxruntime's InvalidGraph, ...
            raise TansError(f"{model_uri} is not a readable ONNX model ({type(exc).__name__}: {str(exc)[:200]}): "
                            "export it again with `tans export`", code="SERVE_MODEL") from exc
        if "classes" not in meta or "input_size" not in meta:
            raise TansError(f"{model_uri} is not an export of this product (its metadata_props lack classes and "
                            "input_size): export it with `tans export`", code="SERVE_MODEL")
        parsed = parse_model_uri(model_uri)
        return cls(path=path, name=name or (parsed[0] if parsed else path.stem), classes=list(meta["classes"]),
                   input_size=int(meta["input_size"]), session=sess, version=version or "1")

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
        self._held = None  # a job that would have overfilled the last batch: it opens the next one
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

    def close(self) -> None:
        """Stop the worker (after the batch in hand)."""
        self.jobs.put(None)
        self._thread.join(timeout=10)

    def _work(self) -> None:
        import time

        while True:
            first = self._held if self._held is not None else self.jobs.get()
            self._held = None
            if first is None:
                return
            group, n = [first], len(first[0])
            deadline = time.monotonic() + self.wait  # from the first request, not from the latest
            while n < self.max_batch:
                try:
                    job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None or n + len(job[0]) > self.max_batch:
                    self._held = job if job is not None else None
                    if job is None:
                        self.jobs.put(None)  # stop after this batch
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
