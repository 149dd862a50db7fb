"""Where runs and artifacts go: the work directory, the tracking URI, the project's experiments.

Default (embedded): MLflow's own default store, ``./mlflow.db`` (SQLite) beside ``./mlruns`` (artifacts) in
the current directory, so ``tans``, ``mlflow run . --env-manager local``, ``mlflow ui`` and ``mlflow models
serve`` with no option all see the same store. ``--work-dir`` / ``TANS_WORK_DIR`` move that folder
(``<work dir>/mlflow.db``, ``<work dir>/mlruns``; the zoo index cache goes to ``<work dir>/tans-cache``);
``MLFLOW_TRACKING_URI`` points at any other store (``postgresql+psycopg://user@host/db`` for a team
database, ``http://...`` for a tracking server).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import TrackingError

log = logging.getLogger("tans_registry")

DEFAULT_WORK_DIR = "."  # MLflow's own default: ./mlflow.db beside ./mlruns
STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlruns"
CACHE_DIR = "tans-cache"
EXPERIMENTS = {"zoo": "tans/zoo", "encoders": "tans/encoders", "queries": "tans/queries", "bench": "tans/bench",
               "transfer": "tans/transfer"}
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
PROJECT_RUN_ID: str | None = None  # the enclosing `mlflow run`, when there is one


def resolve_work_dir(work_dir: str | Path | None = None) -> Path:
    """Explicit argument > ``TANS_WORK_DIR`` > the current directory; created when missing."""
    path = Path(work_dir or os.environ.get("TANS_WORK_DIR") or DEFAULT_WORK_DIR).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrackingError(f"cannot create the work directory {path}: {exc.strerror}. "
                            "Pass --work-dir (or set TANS_WORK_DIR) to a writable folder.") from exc
    return path


_DEFAULTS_SET: set[str] = set()  # default URIs this process gave MLflow (which exports them)


def tracking_uri(work_dir: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when the user set it, else SQLite in the work directory.

    ``mlflow.set_tracking_uri`` writes the URI back into the environment; a value that is one of the
    work-directory defaults this process set is ours, not the user's, so a later call with another
    work directory moves on to its own store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and env not in _DEFAULTS_SET:
        return env
    return f"sqlite:///{work_dir / STORE_FILE}"


def cache_dir(work_dir: Path) -> Path:
    """Where the zoo index cache lives (``<work dir>/tans-cache``)."""
    return work_dir / CACHE_DIR


def is_database_uri(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in _DB_SCHEMES


def setup(work_dir: str | Path | None = None) -> tuple[Path, str]:
    """Point MLflow at the project's store; returns ``(work_dir, tracking_uri)``."""
    import mlflow

    global PROJECT_RUN_ID
    wd = resolve_work_dir(work_dir)
    # our own progress bars go to stderr; MLflow's per-download bars would drown them
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow prints "View run ... at: http://..." on stdout when a run ends on an http(s) tracking server:
    # `--json` promises one document on stdout
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Inside `mlflow run`, MLFLOW_RUN_ID names the project's run; left set, every start_run() would
    # resume that run instead of opening the stage's own runs in the tans/* experiments. Keep it as a
    # lineage link instead (tag `tans.project_run`).
    PROJECT_RUN_ID = os.environ.pop("MLFLOW_RUN_ID", None) or PROJECT_RUN_ID
    uri = tracking_uri(wd)
    password_from_file()
    if is_database_uri(uri) and not uri.startswith("sqlite"):
        check_database(uri)
    elif uri.startswith(("http://", "https://")):
        check_server(uri)
    if uri == f"sqlite:///{wd / STORE_FILE}":
        _DEFAULTS_SET.add(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # the registry always lives with the runs (else a stale one is used)
    return wd, uri


def paged(fetch, page_size: int = 1000) -> list:
    """Every item of a paged MLflow search: ``fetch(max_results, page_token)`` returns one page (a
    ``PagedList`` with ``.token``). The one paging loop of the project (runs and registry alike)."""
    out, token = [], None
    while True:
        page = fetch(page_size, token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def check_database(uri: str, timeout_s: int = 5) -> None:
    """Fail fast with a clear message when a database store is unreachable (MLflow itself retries
    with exponential back-off for minutes before giving up)."""
    import sqlalchemy

    args = {"connect_timeout": timeout_s} if uri.startswith(("postgresql", "mysql")) else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=args)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        raise TrackingError(_explain(uri, exc)) from exc


# MLflow's HTTP client retries an unreachable server with exponential back-off for about 4 minutes by
# default; these bound a request to about 20 s in all (a user's own settings win).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def password_from_file() -> None:
    """``TANS_TRACKING_PASSWORD_FILE`` (a file holding the account's password, e.g. a Docker secret) into
    ``MLFLOW_TRACKING_PASSWORD``, which MLflow's client reads; a password set directly wins."""
    path = os.environ.get("TANS_TRACKING_PASSWORD_FILE")
    if not path or os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        return
    try:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = Path(path).read_text().strip()
    except OSError as exc:
        raise TrackingError(f"cannot read TANS_TRACKING_PASSWORD_FILE={path} ({exc.strerror}): point it at a "
                            "readable file holding the password, or set MLFLOW_TRACKING_PASSWORD") from None


ACCOUNT_HINT = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or TANS_TRACKING_PASSWORD_FILE) to an "
                "account of the server (docs/teams.md: the writer builds and registers, the reader serves)")


def account() -> str:
    """Who this process acts as on the store: the tracking server's account, else the OS user."""
    import getpass

    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user:
        return user
    try:
        return f"{getpass.getuser()} (local)"
    except Exception:  # noqa: BLE001  no passwd entry in a container
        return "unknown (local)"


def _auth_header(parts) -> str | None:
    import base64

    user = parts.username or os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = parts.password if parts.username else os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user:
        return "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    return None


def check_server(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with a clear message when a tracking server does not answer its health check or refuses
    this process's account (a server with MLflow's authentication: ``/users/current``); bound MLflow's own
    retries (:data:`HTTP_DEFAULTS`)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else parts.netloc
    base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    import time

    header = _auth_header(parts)
    deadline = time.monotonic() + timeout_s  # both requests together
    for path in ("/health", "/api/2.0/mlflow/users/current"):
        req = urllib.request.Request(base + path)
        if header:
            req.add_header("Authorization", header)
        try:
            with urllib.request.urlopen(req, timeout=max(0.5, deadline - time.monotonic())) as resp:
                resp.read(64)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                who = parts.username or os.environ.get("MLFLOW_TRACKING_USERNAME")
                raise TrackingError(
                    f"the MLflow tracking server {redact(uri)} refused "
                    + (f"the account `{who}` (wrong password or no such account, HTTP {exc.code}): check "
                       "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" if who else
                       f"a request without an account (HTTP {exc.code}): {ACCOUNT_HINT}")) from None
            # another status (404: a server without authentication): MLflow's own calls will say what is wrong
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"cannot reach the MLflow tracking server {redact(uri)} ({scrub(str(reason))[:200]}). "
                                "Start it (`mlflow server ...`), fix MLFLOW_TRACKING_URI, or unset it to use the embedded "
                                "SQLite store in the work directory.") from None


def stop_process_group(proc, grace_s: float = 20.0) -> None:
    """Stop a server started in its own process group (``start_new_session=True``, as the tests and
    scripts start `mlflow server`): SIGTERM, ``grace_s`` to exit, then SIGKILL to whatever of the group is
    left (its workers outlive the CLI process)."""
    import signal
    import subprocess

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def server_command(backend_store_uri: str, artifacts_destination: str | Path, host: str = "127.0.0.1",
                   port: int = 5000, mlflow_exe: str | Path = "mlflow", workers: int | None = None,
                   allowed_hosts: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The one definition of the MLflow tracking server the project runs (tests, benchmarks, docker):
    ``mlflow server`` on ``backend_store_uri`` (SQLite, PostgreSQL, ...) with served artifacts, so that
    clients upload and download through the server (``mlflow-artifacts:/``) into ``artifacts_destination``
    (a folder or an object-store URI), never into a local ``./mlruns`` of their own.

    ``workers``: uvicorn worker processes (MLflow's default is 4). ``allowed_hosts``: the Host headers the
    server accepts (patterns such as ``mlflow:*``), replacing MLflow's default list (loopback and private
    addresses only); a server reached by a name (a compose service, ``http://mlflow:5000``) must be given
    it, else every call but ``/health`` gets a 403.
    """
    cmd = [str(mlflow_exe), "server", "--backend-store-uri", str(backend_store_uri), "--serve-artifacts",
           "--artifacts-destination", str(artifacts_destination), "--host", str(host), "--port", str(int(port))]
    if workers is not None:
        cmd += ["--workers", str(int(workers))]
    if allowed_hosts:
        cmd += ["--allowed-hosts", ",".join(allowed_hosts)]
    return cmd


def experiment_id(key: str, work_dir: Path) -> str:
    """Id of one of the project's experiments (``zoo``, ``encoders``, ...), created when missing.

    On a database store the artifacts go under ``<work_dir>/mlruns/<experiment>`` (``tans-zoo``, ...);
    behind a tracking server they go where the server serves them.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    name = EXPERIMENTS[key]
    client = mlflow.MlflowClient()

    def settled():
        """The experiment after another command's create or restore won the race, or None."""
        exp = client.get_experiment_by_name(name)
        return exp.experiment_id if exp is not None and exp.lifecycle_stage == "active" else None

    try:
        exp = client.get_experiment_by_name(name)
        # two commands started at once may both find the experiment missing (or deleted): the one whose
        # create (restore) comes second fails on it (SQLite: UNIQUE constraint; a server:
        # RESOURCE_ALREADY_EXISTS) and uses the experiment the other one made
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                try:
                    client.restore_experiment(exp.experiment_id)
                except MlflowException:
                    if settled() is None:
                        raise
            return exp.experiment_id
        location = None
        if is_database_uri(mlflow.get_tracking_uri()):
            location = (work_dir / ARTIFACT_DIR / name.replace("/", "-")).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:
            if (other := settled()) is None:
                raise
            return other
    except MlflowException as exc:
        raise TrackingError(_explain(mlflow.get_tracking_uri(), exc, f"create the experiment {name}")) from exc
    except Exception as exc:  # connection errors surface as SQLAlchemy/psycopg exceptions
        raise TrackingError(_explain(mlflow.get_tracking_uri(), exc)) from exc


def is_store_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the store's connection (database driver, SQLAlchemy, HTTP client)."""
    return type(exc).__module__.split(".", 1)[0] in ("sqlalchemy", "psycopg", "psycopg2", "requests", "urllib3")


def store_error(exc: BaseException, action: str | None = None) -> TrackingError:
    """``exc`` from the store as one clear error naming the (redacted) store and the next step."""
    import mlflow

    return TrackingError(_explain(mlflow.get_tracking_uri(), exc, action))


def _explain(uri: str, exc: Exception, action: str | None = None) -> str:
    denied = refusal(uri, exc, action)
    if denied:
        return denied
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"cannot use the MLflow tracking store {redact(uri)}: {scrub(first)[:300]}. "
            "Check that the database or server is running and the URI is right "
            "(MLFLOW_TRACKING_URI), or unset it to use the embedded SQLite store in the work directory.")


_READS = ("read", "list", "resolve", "download", "load", "search", "find")


def refusal(uri: str, exc: BaseException, action: str | None = None) -> str | None:
    """One line for a request the tracking server refused (HTTP 401/403 of MLflow's authentication): who,
    which right was missing (read, edit, manage), what to set; None for any other error. No password."""
    code = str(getattr(exc, "error_code", "") or "")
    text = str(exc)
    if code == "UNAUTHENTICATED" or "error code 401" in text:
        who = os.environ.get("MLFLOW_TRACKING_USERNAME")
        return (f"the MLflow tracking server {redact(uri)} refused "
                + (f"the account `{who}` (wrong password or no such account): check MLFLOW_TRACKING_USERNAME and "
                   "MLFLOW_TRACKING_PASSWORD" if who else f"a request without an account: {ACCOUNT_HINT}"))
    if code == "PERMISSION_DENIED" or "error code 403" in text:
        if action is None:  # MLflow's message names the endpoint: /api/2.0/mlflow/runs/create
            import re

            m = re.search(r"endpoint (\S+)", text)
            endpoint = m.group(1) if m else ""
            last = endpoint.rstrip("/").rsplit("/", 1)[-1]
            action = f"call {endpoint}" if endpoint else "do what was asked"
            verb = "read" if last in ("get", "search", "list", "get-by-name") else \
                "delete" if last.startswith("delete") else "edit"
        else:
            verb = action.split()[0].lower()
        what = action
        right = "manage" if verb in ("delete", "grant", "revoke") else "read" if verb in _READS else "edit"
        who = os.environ.get("MLFLOW_TRACKING_USERNAME") or "(none)"
        return (f"the MLflow tracking server {redact(uri)} refused to {what}: the account `{who}` lacks the {right} "
                f"right; use an account that has it (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD; the "
                f"writer account builds, registers and moves aliases) or ask the server's admin to grant it")
    return None


def scrub(text: str) -> str:
    """``text`` with the password of every URI in it masked (error messages quote URIs)."""
    import re

    return re.sub(r"(\b[a-zA-Z][\w+.-]*://[^:/@\s]+):[^@\s]*@", r"\1:***@", text)


def redact(uri: str) -> str:
    """The URI without a password."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        return f"{scheme}://{creds}@{host}"
    return uri
