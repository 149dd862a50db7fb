"""``tans serve MODEL_URI``: an exported network over HTTP, in the protocols clients already speak.

- MLflow's scoring protocol, as ``mlflow models serve`` answers it: ``GET /ping``, ``POST /invocations``
  with ``{"inputs": images}`` or ``{"instances": images}`` -> ``{"predictions": {"logits": [...]}}``.
- The Open Inference Protocol v2 (KServe, Triton): ``GET /v2``, ``/v2/health/live``,
  ``/v2/health/ready``, ``/v2/models/{name}``, ``/v2/models/{name}/ready``, ``POST
  /v2/models/{name}/infer`` with ``{"inputs": [{"name": "images", "shape": [N, H, W, 3], "datatype":
  "UINT8", "data": [...]}]}``.

Images are uint8 pixels ``[N, H, W, 3]`` (the graph does the preprocessing). Concurrent requests are
batched into one session call. A bad request gets a 4xx with a message, never a crash; the body is
capped (``max_body_mb``, 413 beyond). Binds loopback unless told otherwise.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from .. import params as P
from ..errors import TansError
from .model import Batcher, BadInput, OnnxModel

log = logging.getLogger("tans_registry")
STAGE = "serve"
DRAIN_LIMIT = 64 * 2 ** 20  # an oversized body up to this size is read and dropped; beyond, the connection closes


@dataclass(frozen=True)
class ServeConfig:
    model_uri: str
    host: str = "127.0.0.1"        # loopback unless told otherwise
    port: int = 8080
    device: str = "auto"           # auto: CUDA when onnxruntime has it and a GPU answers, else CPU
    max_batch: int = 64            # images merged into one session call
    max_body_mb: float = 16.0      # larger request bodies get 413
    work_dir: str | None = None

    def __post_init__(self) -> None:
        P.store(self, model_uri=P.as_path(STAGE, "model_uri", self.model_uri, optional=False, flag=False),
                host=P.as_names(STAGE, "host", self.host, optional=False)[0],
                port=P.as_int(STAGE, "port", self.port, 0),
                device=P.as_choice(STAGE, "device", self.device, ("auto", "cpu", "cuda")),
                max_batch=P.as_int(STAGE, "max_batch", self.max_batch, 1),
                max_body_mb=P.as_float(STAGE, "max_body_mb", self.max_body_mb, above=0),
                work_dir=P.as_path(STAGE, "work_dir", self.work_dir))
        if self.port > 65535:
            P.fail(STAGE, "port", "an int from 0 to 65535", self.port)


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _images_from_invocations(body: dict) -> object:
    keys = [k for k in ("inputs", "instances", "dataframe_split", "dataframe_records") if k in body]
    if len(keys) != 1:
        raise HTTPError(400, "the body must hold exactly one of 'inputs' or 'instances' (images [N, H, W, 3] as "
                             f"nested lists of 0..255); got keys {sorted(body)}")
    if keys[0].startswith("dataframe"):
        raise HTTPError(400, f"'{keys[0]}' is not supported for images: send {{\"inputs\": [[[[r, g, b], ...]]]}}")
    value = body[keys[0]]
    if isinstance(value, dict):  # {"inputs": {"images": [...]}}: named tensors
        if len(value) != 1:
            raise HTTPError(400, f"one named input expected ('images'); got {sorted(value)}")
        value = next(iter(value.values()))
    return value


def _images_from_v2(body: dict, model: OnnxModel) -> np.ndarray:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise HTTPError(400, "'inputs' must be a list of one tensor {name, shape, datatype, data}")
    t = inputs[0]
    missing = [k for k in ("shape", "datatype", "data") if k not in t]
    if missing:
        raise HTTPError(400, f"the input tensor lacks {missing}")
    if t["datatype"] != "UINT8":
        raise HTTPError(400, f"datatype must be UINT8 (raw pixels); got {t['datatype']!r}")
    shape = t["shape"]
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise HTTPError(400, f"shape must be a list of non-negative ints; got {shape!r}")
    try:
        flat = np.asarray(t["data"], dtype=np.float64).ravel()
    except (ValueError, TypeError):
        raise HTTPError(400, "data must be a flat (or nested) list of numbers") from None
    if flat.size != int(np.prod(shape)):
        raise HTTPError(400, f"data holds {flat.size} values; shape {shape} needs {int(np.prod(shape))}")
    return flat.reshape(shape)


def make_server(cfg: ServeConfig, model: OnnxModel | None = None) -> ThreadingHTTPServer:
    """The HTTP server (not started: call ``serve_forever``); ``server.model`` and ``server.batcher``."""
    from .. import tracking

    tracking.setup(cfg.work_dir)
    model = model or OnnxModel.load(cfg.model_uri, device=cfg.device)
    batcher = Batcher(model, max_batch=cfg.max_batch)
    max_body = int(cfg.max_body_mb * 2 ** 20)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30  # seconds a client may take to send its request before the connection is dropped

        def log_message(self, fmt, *args):  # requests go to the debug log, not stderr
            log.debug("serve: " + fmt, *args)

        def _send(self, status: int, payload) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict:
            self.body_read = True
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self.close_connection = True
                raise HTTPError(411, "send the body with a Content-Length (chunked bodies are not accepted)")
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                self.close_connection = True
                raise HTTPError(400, "Content-Length must be an integer") from None
            if length < 0:
                self.close_connection = True
                raise HTTPError(400, "Content-Length must not be negative")
            if length > max_body:
                self.close_connection = True
                if length <= DRAIN_LIMIT:  # read it away, so the client gets the 413 instead of a reset
                    for _ in range(0, length, 2 ** 20):
                        self.rfile.read(min(2 ** 20, length))
                        length -= 2 ** 20
                raise HTTPError(413, f"the body has {int(self.headers['Content-Length'])} bytes; at most {max_body} "
                                     "are accepted (--max-body-mb)")
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw or b"null")
            except (ValueError, UnicodeDecodeError) as exc:
                raise HTTPError(400, f"the body is not valid JSON: {exc}") from None
            if not isinstance(body, dict):
                raise HTTPError(400, "the body must be a JSON object")
            return body

        def _model_path(self, path: str) -> str | None:
            m = re.fullmatch(r"/v2/models/([^/]+)(/versions/[^/]+)?(/ready|/infer)?", path)
            if m is None:
                return None
            if m.group(1) != model.name:
                raise HTTPError(404, f"no model {m.group(1)!r} here; this server serves {model.name!r}")
            return m.group(3) or ""

        def do_GET(self):  # noqa: N802
            try:
                path = self.path.split("?", 1)[0].rstrip("/") or "/"
                if path in ("/ping", "/health"):
                    return self._send(200, {"status": "ok"})
                if path == "/v2":
                    return self._send(200, {"name": "tans-serve", "version": "2", "extensions": []})
                if path == "/v2/health/live":
                    return self._send(200, {"live": True})
                if path == "/v2/health/ready":
                    return self._send(200, {"ready": True})
                sub = self._model_path(path)
                if sub == "":
                    s = model.input_size
                    return self._send(200, {
                        "name": model.name, "versions": [model.version], "platform": "onnxruntime_onnx",
                        "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, s, s, 3]}],
                        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, len(model.classes)]}],
                        "parameters": {"classes": model.classes, "providers": model.providers}})
                if sub == "/ready":
                    return self._send(200, {"name": model.name, "ready": True})
                raise HTTPError(404, f"no route GET {path}")
            except HTTPError as exc:
                self._send(exc.status, {"error": str(exc)})

        def do_POST(self):  # noqa: N802
            self.body_read = False
            try:
                path = self.path.split("?", 1)[0].rstrip("/")
                if path == "/invocations":
                    x = model.check(_images_from_invocations(self._body()))
                    return self._send(200, {"predictions": {"logits": batcher(x).tolist()}})
                if self._model_path(path) == "/infer":
                    body = self._body()
                    x = model.check(_images_from_v2(body, model))
                    out = batcher(x)
                    resp = {"model_name": model.name, "model_version": model.version,
                            "outputs": [{"name": "logits", "datatype": "FP32", "shape": list(out.shape),
                                         "data": out.ravel().tolist()}]}
                    if "id" in body:
                        resp["id"] = body["id"]
                    return self._send(200, resp)
                raise HTTPError(404, f"no route POST {path}")
            except HTTPError as exc:
                if not self.body_read:  # the body is still on the wire: it must not be read as the next request
                    self.close_connection = True
                self._send(exc.status, {"error": str(exc)})
            except BadInput as exc:
                self._send(400, {"error": str(exc)})
            except Exception as exc:  # noqa: BLE001  the server keeps serving
                log.exception("serve: request failed")
                self._send(500, {"error": f"{type(exc).__name__}: {exc}"})

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def server_close(self):
            super().server_close()
            batcher.close()

    try:
        server = Server((cfg.host, cfg.port), Handler)
    except OSError as exc:
        batcher.close()
        raise TansError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}. Pass another --port (or "
                        "--host)", code="SERVE_ADDRESS") from exc
    server.model, server.batcher = model, batcher
    return server
