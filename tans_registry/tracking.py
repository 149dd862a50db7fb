"""Where runs and artifacts go: the work directory, the tracking URI, the project's experiments.

Default (embedded): ``./tans-work/mlflow.db`` (SQLite) with artifacts in ``./tans-work/artifacts``.
``--work-dir`` / ``TANS_WORK_DIR`` move the work directory; ``MLFLOW_TRACKING_URI`` points at any other
store (``postgresql+psycopg://user@host/db`` for a team database, ``http://...`` for a tracking server).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import TrackingError

log = logging.getLogger("tans_registry")

DEFAULT_WORK_DIR = "tans-work"
EXPERIMENTS = {"zoo": "tans/zoo", "encoders": "tans/encoders", "queries": "tans/queries", "bench": "tans/bench"}
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def resolve_work_dir(work_dir: str | Path | None = None) -> Path:
    """Explicit argument > ``TANS_WORK_DIR`` > ``./tans-work``; created when missing."""
    path = Path(work_dir or os.environ.get("TANS_WORK_DIR") or DEFAULT_WORK_DIR).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrackingError(f"cannot create the work directory {path}: {exc.strerror}. "
                            "Pass --work-dir (or set TANS_WORK_DIR) to a writable folder.") from exc
    return path


def tracking_uri(work_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work_dir / 'mlflow.db'}"


def is_database_uri(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in _DB_SCHEMES


def setup(work_dir: str | Path | None = None) -> tuple[Path, str]:
    """Point MLflow at the project's store; returns ``(work_dir, tracking_uri)``."""
    import mlflow

    wd = resolve_work_dir(work_dir)
    uri = tracking_uri(wd)
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite"):
        mlflow.set_registry_uri(uri)
    return wd, uri


def experiment_id(key: str, work_dir: Path) -> str:
    """Id of one of the project's experiments (``zoo``, ``encoders``, ...), created when missing.

    On a database store the artifacts go under ``<work_dir>/artifacts/<experiment>``; behind a
    tracking server they go where the server serves them.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    name = EXPERIMENTS[key]
    client = mlflow.MlflowClient()
    try:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        location = None
        if is_database_uri(mlflow.get_tracking_uri()):
            location = (work_dir / "artifacts" / name.replace("/", "-")).as_uri()
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as exc:
        raise TrackingError(_explain(mlflow.get_tracking_uri(), exc)) from exc
    except Exception as exc:  # connection errors surface as SQLAlchemy/psycopg exceptions
        raise TrackingError(_explain(mlflow.get_tracking_uri(), exc)) from exc


def _explain(uri: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"cannot use the MLflow tracking store {redact(uri)}: {first[:300]}. "
            "Check that the database or server is running and the URI is right "
            "(MLFLOW_TRACKING_URI), or unset it to use the embedded SQLite store in the work directory.")


def redact(uri: str) -> str:
    """The URI without a password."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        return f"{scheme}://{creds}@{host}"
    return uri
