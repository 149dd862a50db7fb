"""``tans serve MODEL_URI``: an exported network over HTTP, in the protocols clients already speak.

- MLflow's scoring protocol, as ``mlflow models serve`` answers it: ``GET /ping``, ``POST /invocations``
  with ``{"inputs": images}`` or ``{"instances": images}`` -> ``{"predictions": {"logits": [...],
  "probabilities": [...]}}`` (the product's one output contract; class names in the model metadata).
- The Open Inference Protocol v2 (KServe, Triton): ``GET /v2``, ``/v2/health/live``,
  ``/v2/health/ready``, ``/v2/models/{name}``, ``/v2/models/{name}/ready``, ``POST
  /v2/models/{name}/infer`` with ``{"inputs": [{"name": "images", "shape": [N, H, W, 3], "datatype":
  "UINT8", "data": [...]}]}``.

Images are uint8 pixels ``[N, H, W, 3]`` (the graph does the preprocessing). Concurrent requests are
batched into one session call. A bad request gets a 4xx with a message, never a crash; the body is
capped (``max_body_mb``, 413 beyond). Binds loopback unless told otherwise; bound to any other address it
asks every request but ``/v2/health/*`` (the probes) for ``Authorization: Bearer <token>`` (401 without it)
unless started with ``insecure_no_auth``.

The HTTP layer is the one MLflow's own scoring server runs on: a FastAPI application served by uvicorn
(``GET /docs``: the OpenAPI page, ``/openapi.json`` its schema). The request's JSON is parsed and the
session called in worker threads, so the event loop keeps accepting while a batch runs. SIGTERM or
Ctrl-C stops accepting connections and answers the requests already in flight before the process exits.
"""
from __future__ import annotations

import gc
import json
import logging
import signal
import socket
import threading
from dataclasses import dataclass, field

import numpy as np
from fastapi import Request  # at module level: the routes' annotations are resolved in this module's globals

from .. import params as P
from ..errors import ConfigError, TansError
from .model import Batcher, BadInput, OnnxModel, softmax

log = logging.getLogger("tans_registry")
STAGE = "serve"
DRAIN_LIMIT = 64 * 2 ** 20  # an oversized body up to this size is read and dropped; beyond, the connection closes
GRACE_S = 30.0  # on SIGTERM, in-flight requests get this long to be answered


@dataclass(frozen=True)
class ServeConfig:
    model_uri: str
    host: str = "127.0.0.1"        # loopback unless told otherwise
    port: int = 8080
    device: str = "auto"           # auto: CUDA when onnxruntime has it and a GPU answers, else CPU
    max_batch: int = 64            # images merged into one session call
    max_body_mb: float = 16.0      # larger request bodies get 413
    work_dir: str | None = None
    # the bearer token every request but /v2/health/* must carry (never a CLI value; kept out of the repr)
    token: str | None = field(default=None, repr=False)
    insecure_no_auth: bool = False  # beyond loopback without a token: explicitly asked for

    def __post_init__(self) -> None:
        P.store(self, model_uri=P.as_path(STAGE, "model_uri", self.model_uri, optional=False, flag=False),
                host=P.as_names(STAGE, "host", self.host, optional=False)[0],
                port=P.as_int(STAGE, "port", self.port, 0),
                device=P.as_choice(STAGE, "device", self.device, ("auto", "cpu", "cuda")),
                max_batch=P.as_int(STAGE, "max_batch", self.max_batch, 1),
                max_body_mb=P.as_float(STAGE, "max_body_mb", self.max_body_mb, above=0),
                work_dir=P.as_path(STAGE, "work_dir", self.work_dir),
                insecure_no_auth=P.as_bool(STAGE, "insecure_no_auth", self.insecure_no_auth))
        if self.port > 65535:
            P.fail(STAGE, "port", "an int from 0 to 65535", self.port)
        if self.token is not None and len(self.token.strip()) < 16:
            raise ConfigError("the serving token is shorter than 16 characters: use a long random one (`python -c "
                              "'import secrets; print(secrets.token_urlsafe(24))'`, or `tans team secrets DIR`)")
        if self.token is not None:
            object.__setattr__(self, "token", self.token.strip())
        if self.token is None and not self.insecure_no_auth and not is_loopback(self.host):
            raise ConfigError(f"tans serve on {self.host} (not a loopback address) needs a bearer token, so that "
                              "only clients holding it can use the model: put it in a file and pass --token-file FILE "
                              "(or set TANS_SERVE_TOKEN_FILE, or TANS_SERVE_TOKEN); --insecure-no-auth serves without "
                              "one (anyone who reaches the port can call the model)")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


OPEN_PATHS = ("/v2/health/",)  # probes reach these without a token


class BearerAuth:
    """ASGI wrapper: every HTTP request but :data:`OPEN_PATHS` must carry ``Authorization: Bearer <token>``
    (compared in constant time); 401 with ``WWW-Authenticate: Bearer`` otherwise."""

    def __init__(self, app, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        import hmac

        if scope["type"] == "http" and not scope["path"].startswith(OPEN_PATHS):
            got = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(got, self.expected):
                body = json.dumps({"error": "this server needs `Authorization: Bearer <token>` (the token its "
                                            "operator gave it); none or another was sent"}).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


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


IMAGES_SCHEMA = {"type": "array", "description": "uint8 images [N, H, W, 3] as nested lists of 0..255",
                 "items": {"type": "array", "items": {"type": "array", "items": {"type": "array",
                                                                              "items": {"type": "integer"}}}}}
INVOCATIONS_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "description": "exactly one of inputs or instances (as `mlflow models serve` takes them)",
    "properties": {"inputs": IMAGES_SCHEMA, "instances": IMAGES_SCHEMA}}}}}
V2_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
            "type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
                "name": {"type": "string", "example": "images"},
                "shape": {"type": "array", "items": {"type": "integer"}, "example": [1, 32, 32, 3]},
                "datatype": {"type": "string", "enum": ["UINT8"]},
                "data": {"type": "array", "items": {"type": "integer"}}}}}}}}}}


def _json(status: int, payload):
    from starlette.responses import Response

    return Response(json.dumps(payload), status_code=status, media_type="application/json")


def make_app(model: OnnxModel, batcher: Batcher, max_body: int):
    """The FastAPI application: both protocols over ``model``, requests batched by ``batcher``."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title=f"tans serve: {model.name}", version=str(model.version),
                  description="An exported network in MLflow's scoring protocol and the Open Inference Protocol v2 "
                              "(KServe, Triton). Images are uint8 [N, H, W, 3]; the graph does the preprocessing.")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):  # unknown routes and methods: our JSON shape, not FastAPI's
        if exc.status_code == 404:
            return _json(404, {"error": f"no route {request.method} {request.url.path}"})
        return _json(exc.status_code, {"error": str(exc.detail)})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        return _json(400, {"error": str(exc)})

    async def body_of(request: Request) -> bytes:
        """The body, at most ``max_body`` bytes (413 beyond: a declared oversize body is read away first,
        up to DRAIN_LIMIT, so that the client reads the answer instead of a reset)."""
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                raise HTTPError(400, "Content-Length must be an integer") from None
            if length < 0:
                raise HTTPError(400, "Content-Length must not be negative")
            if length > max_body:
                if length <= DRAIN_LIMIT:
                    async for _ in request.stream():
                        pass
                raise HTTPError(413, f"the body has {length} bytes; at most {max_body} are accepted (--max-body-mb)")
        chunks, size = [], 0
        async for chunk in request.stream():  # a body without Content-Length (chunked) is capped as it comes
            size += len(chunk)
            if size > max_body:
                raise HTTPError(413, f"the body has more than {max_body} bytes; at most {max_body} are accepted "
                                     "(--max-body-mb)")
            chunks.append(chunk)
        return b"".join(chunks)

    def parse(raw: bytes) -> dict:
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return body

    def invocations(raw: bytes) -> dict:
        x = model.check(_images_from_invocations(parse(raw)))
        logits = batcher(x)
        return {"predictions": {"logits": logits.tolist(), "probabilities": softmax(logits).tolist()}}

    def infer(raw: bytes) -> dict:
        body = parse(raw)
        x = model.check(_images_from_v2(body, model))
        out = batcher(x)
        resp = {"model_name": model.name, "model_version": model.version,
                "outputs": [{"name": name, "datatype": "FP32", "shape": list(out.shape), "data": y.ravel().tolist()}
                            for name, y in (("logits", out), ("probabilities", softmax(out)))]}
        if "id" in body:
            resp["id"] = body["id"]
        return resp

    async def answer(request: Request, work) -> object:
        try:
            raw = await body_of(request)
            return _json(200, await run_in_threadpool(work, raw))  # parsing and the session off the event loop
        except HTTPError as exc:
            return _json(exc.status, {"error": str(exc)})
        except BadInput as exc:
            return _json(400, {"error": str(exc)})
        except Exception as exc:  # noqa: BLE001  the server keeps serving
            log.exception("serve: request failed")
            return _json(500, {"error": f"{type(exc).__name__}: {exc}"})

    def known(name: str) -> None:
        if name != model.name:
            raise HTTPError(404, f"no model {name!r} here; this server serves {model.name!r}")

    def guarded(fn):
        try:
            return fn()
        except HTTPError as exc:
            return _json(exc.status, {"error": str(exc)})

    @app.get("/ping", summary="Health (MLflow scoring protocol)")
    @app.get("/health", include_in_schema=False)
    async def ping():
        return _json(200, {"status": "ok"})

    @app.post("/invocations", summary="Logits for images (MLflow scoring protocol)",
              openapi_extra={"requestBody": INVOCATIONS_BODY})
    async def post_invocations(request: Request):
        return await answer(request, invocations)

    @app.get("/v2", summary="Server metadata (Open Inference Protocol v2)")
    async def v2():
        return _json(200, {"name": "tans-serve", "version": "2", "extensions": []})

    @app.get("/v2/health/live", summary="Liveness (v2)")
    async def live():
        return _json(200, {"live": True})

    @app.get("/v2/health/ready", summary="Readiness (v2)")
    async def ready():
        return _json(200, {"ready": True})

    def metadata(name: str):
        known(name)
        s = model.input_size
        return _json(200, {"name": model.name, "versions": [model.version], "platform": "onnxruntime_onnx",
                           "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, s, s, 3]}],
                           "outputs": [{"name": name, "datatype": "FP32", "shape": [-1, len(model.classes)]}
                                       for name in ("logits", "probabilities")],
                           "parameters": {"classes": model.classes, "providers": model.providers}})

    def model_ready(name: str):
        known(name)
        return _json(200, {"name": model.name, "ready": True})

    @app.get("/v2/models/{name}", summary="Model metadata (v2)")
    @app.get("/v2/models/{name}/versions/{version}", include_in_schema=False)
    async def get_model(name: str, version: str | None = None):
        return guarded(lambda: metadata(name))

    @app.get("/v2/models/{name}/ready", summary="Model readiness (v2)")
    @app.get("/v2/models/{name}/versions/{version}/ready", include_in_schema=False)
    async def get_ready(name: str, version: str | None = None):
        return guarded(lambda: model_ready(name))

    async def post_infer(request: Request, name: str):
        if name != model.name:  # refused before the body is read: uvicorn discards or closes it
            return _json(404, {"error": f"no model {name!r} here; this server serves {model.name!r}"})
        return await answer(request, infer)

    app.add_api_route("/v2/models/{name}/infer", post_infer, methods=["POST"], summary="Logits for images (v2)",
                      openapi_extra={"requestBody": V2_BODY})
    app.add_api_route("/v2/models/{name}/versions/{version}/infer", post_infer, methods=["POST"],
                      include_in_schema=False)
    return app


class Server:
    """``tans serve``'s server: the application on uvicorn, on a socket bound when it is made (so a taken
    port fails at once, and port 0 is a real port in ``server_address``). ``serve_forever`` runs until
    :meth:`shutdown` (from another thread) or SIGTERM/SIGINT (in the main thread), answering the requests in
    flight first; ``server_close`` releases the socket and the batcher."""

    def __init__(self, app, sock: socket.socket, model: OnnxModel, batcher: Batcher):
        import uvicorn

        self.model, self.batcher, self.socket = model, batcher, sock
        self.server_address = sock.getsockname()
        self.stopped_by: str | None = None
        self._uvicorn = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                                      timeout_graceful_shutdown=GRACE_S, timeout_keep_alive=30))
        self._done = threading.Event()

    def serve_forever(self) -> None:
        main = threading.current_thread() is threading.main_thread()
        previous = {}
        if main:  # after uvicorn's graceful stop it raises the signal again: let that end serve_forever, not us
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda signum, frame: setattr(self, "stopped_by",
                                                                                 signal.Signals(signum).name))
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._done.set()

    def shutdown(self) -> None:
        self._uvicorn.should_exit = True
        self._done.wait(GRACE_S + 5)

    def server_close(self) -> None:
        self.socket.close()
        self.batcher.close()


def make_server(cfg: ServeConfig, model: OnnxModel | None = None) -> Server:
    """The server (not started: call ``serve_forever``); ``server.model`` and ``server.batcher``."""
    from .. import tracking

    tracking.setup(cfg.work_dir)
    model = model or OnnxModel.load(cfg.model_uri, device=cfg.device)
    batcher = Batcher(model, max_batch=cfg.max_batch)
    try:
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without it each
        # answer waited ~40 ms on the client's delayed ACK (p50 44 ms for /ping, against ~1 ms)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((cfg.host, cfg.port))
        sock.listen(128)
        sock.set_inheritable(True)
    except OSError as exc:
        batcher.close()
        raise TansError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}. Pass another --port (or "
                        "--host)", code="SERVE_ADDRESS") from exc
    app = make_app(model, batcher, int(cfg.max_body_mb * 2 ** 20))
    if cfg.token is not None:
        app = BearerAuth(app, cfg.token)
    # Every object alive now (torch, onnxruntime, MLflow: millions) out of the collector's sight: a request
    # body parses into thousands of lists, which set off full collections that walked them all (one request
    # in ~10 of 16 images took 400-500 ms instead of ~35 ms).
    gc.freeze()
    return Server(app, sock, model, batcher)
