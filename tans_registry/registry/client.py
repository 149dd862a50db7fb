"""The registry boundary: every MLflow Model Registry call goes through this package, and every
``MlflowException`` it raises leaves it as a :class:`~tans_registry.errors.RegistryError` whose message
names the store (password redacted), what failed, and the next step.

Also the few reads every registry module needs: a model or None, a model's versions (paged), the
version behind an alias or None ("no such alias" is None; any other store error is an error).
"""
from __future__ import annotations

import functools
from contextlib import contextmanager

from .. import tracking
from ..errors import RegistryError, TansError
from .names import quote

MISSING = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")
_NEXT = "check that the store is reachable (MLFLOW_TRACKING_URI) and run the command again"


def client():
    """An ``MlflowClient`` on the store ``tracking.setup`` chose."""
    import mlflow

    return mlflow.MlflowClient()


def error_code(exc: Exception) -> str:
    return str(getattr(exc, "error_code", "") or "")


@contextmanager
def wrapped(action: str, next_step: str = _NEXT, also: tuple = ()):
    """Turn an ``MlflowException`` (or a connection error from the store's driver, or one of ``also``,
    e.g. ``OSError`` around a download) raised inside into a :class:`RegistryError`:
    ``cannot <action> in the model registry at <uri>: <cause>; <next step>``."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except TansError:
        raise
    except (MlflowException, *also) as exc:
        raise _error(action, exc, next_step) from exc
    except Exception as exc:  # SQLAlchemy / psycopg errors from a database store
        if not tracking.is_store_error(exc):
            raise
        raise _error(action, exc, next_step) from exc


def boundary(action: str, next_step: str = _NEXT, also: tuple = ()):
    """Decorator form of :func:`wrapped` for the registry's public functions."""
    def deco(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with wrapped(action, next_step, also):
                return fn(*args, **kwargs)
        return inner
    return deco


def _error(action: str, exc: Exception, next_step: str) -> RegistryError:
    import mlflow

    denied = tracking.refusal(mlflow.get_registry_uri(), exc, action)
    if denied:
        return RegistryError(denied)
    text = str(getattr(exc, "message", None) or exc).strip()
    first = text.splitlines()[0][:300] if text else type(exc).__name__
    return RegistryError(f"cannot {action} in the model registry at {tracking.redact(mlflow.get_registry_uri())}: "
                         f"{tracking.scrub(first)}; {next_step}")


@boundary("read a registered model")
def get_model(name: str):
    """The registered model ``name``, or None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_registered_model(name)
    except MlflowException as exc:
        if error_code(exc) in MISSING or (error_code(exc) == "PERMISSION_DENIED" and not _listed(name)):
            return None
        raise


def _listed(name: str) -> bool:
    """Whether a registered model ``name`` exists, by a search (filtered by the account's rights). An
    authenticated server answers a read of a model that does not exist with 403, not 404: it cannot find
    the model's workspace; a search tells "missing" from "refused"."""
    return bool(client().search_registered_models(f"name = {quote(name)}", max_results=1))


@boundary("create a registered model")
def ensure_model(name: str, tags: dict | None = None, description: str | None = None):
    """The registered model ``name``, created (with ``tags`` and ``description``) when missing."""
    model = get_model(name)
    if model is None:
        from mlflow.exceptions import MlflowException

        try:
            model = client().create_registered_model(name, tags=tags, description=description)
        except MlflowException as exc:  # another process created it in between
            if error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise
            model = client().get_registered_model(name)
    return model


@boundary("list a model's versions")
def versions(name: str) -> list:
    """Every version of the registered model ``name`` (paged)."""
    c = client()
    return tracking.paged(lambda n, token: c.search_model_versions(f"name = {quote(name)}", max_results=n,
                                                                   page_token=token))


@boundary("list model versions")
def versions_like(prefix: str) -> list:
    """Every version of the registered models whose names start with ``prefix`` (paged)."""
    c = client()
    quote(prefix)  # refuses anything but [A-Za-z0-9_.-]
    return tracking.paged(lambda n, token: c.search_model_versions(f"name LIKE '{prefix}%'", max_results=n,
                                                                   page_token=token))


@boundary("list registered models")
def models_like(prefix: str) -> list:
    """Every registered model whose name starts with ``prefix`` (paged)."""
    c = client()
    quote(prefix)
    return tracking.paged(lambda n, token: c.search_registered_models(f"name LIKE '{prefix}%'", max_results=n,
                                                                      page_token=token))


@boundary("read a model alias")
def alias_version(name: str, alias: str):
    """The version ``name@alias`` points at, or None when the model or the alias does not exist.
    Any other store error propagates (a failing store is not "no champion")."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        text = str(exc).lower()
        if error_code(exc) in MISSING or ("alias" in text and "not found" in text):
            return None
        if error_code(exc) == "PERMISSION_DENIED" and not _listed(name):
            return None
        raise


ALIAS_LOG_TAG = "tans.alias_log."  # + alias: the last moves of that alias, newest last (JSON)
ALIAS_LOG_KEEP = 10                # entries kept (a registered-model tag holds at most 5,000 characters)


@boundary("move a model alias")
def move_alias(name: str, alias: str, version) -> None:
    """Point ``name@alias`` at ``version`` (a tracking server asks for the edit right) and record the move
    on the registered model: tag ``tans.alias_log.<alias>`` keeps the last moves, each with the version, the
    version it came from, the account that moved it and when (UTC). Nothing is recorded for a no-op. The entry
    is written before the alias moves, so a process killed in between leaves the entry, and its rerun moves
    the alias without writing it twice. Moves made outside the product (the MLflow UI, MLflow's client) are
    not recorded; two processes moving one alias at the same instant may keep one entry of the two."""
    import json
    from datetime import datetime, timezone

    version = str(version)
    before = alias_version(name, alias)
    if before is not None and str(before.version) == version:
        return
    previous = None if before is None else str(before.version)
    try:
        log = json.loads(client().get_registered_model(name).tags.get(ALIAS_LOG_TAG + alias, "[]"))
    except ValueError:
        log = []
    if not (log and log[-1].get("version") == version and log[-1].get("from") == previous):
        log.append({"version": version, "from": previous, "by": tracking.account(),
                    "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
        client().set_registered_model_tag(name, ALIAS_LOG_TAG + alias, json.dumps(log[-ALIAS_LOG_KEEP:]))
    client().set_registered_model_alias(name, alias, version)
