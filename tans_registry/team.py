"""The team registry: an MLflow tracking server that lets no one in without an account.

``tans team secrets DIR`` writes the deployment's secrets, once, into ``DIR`` (one file each, mode 0600,
never in the repository): the PostgreSQL password, the MLflow admin's, a ``writer`` account's (builds,
registrations, queries), a ``reader`` account's (serving, predicting), the Flask key MLflow's login forms
need, and the bearer token of ``tans serve``. ``tans team server`` runs ``mlflow server --app-name
basic-auth --enable-workspaces`` (:func:`~tans_registry.tracking.server_command` plus the auth options) with
the admin created from those secrets on first start, then gives the two accounts their rights:

===========  ===========================================================================================
account      rights (MLflow roles of the default workspace)
===========  ===========================================================================================
``admin``    everything (MLflow's admin flag): users, permissions
``writer``   ``USE`` on the workspace (create experiments, runs, registered models) and ``EDIT`` on every
             experiment and registered model (log runs, register versions, move aliases)
``reader``   ``READ`` on every experiment and registered model (search, download, load): it can neither
             create, register, nor move an alias
===========  ===========================================================================================

Workspaces mode is what makes the reader read-only: without it MLflow lets every account create new
experiments and registered models (and own them). Clients pass an account the way every MLflow client
does, ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD`` (or ``TANS_TRACKING_PASSWORD_FILE``, a
file holding the password, which ``tans`` reads into ``MLFLOW_TRACKING_PASSWORD``).
"""
from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, TrackingError

# one file per secret in the secrets folder (Docker secrets take the same shape)
SECRET_FILES = ("postgres_password", "admin_password", "writer_password", "reader_password", "flask_secret_key",
                "serve_token")
ACCOUNTS = {"writer": "writer_password", "reader": "reader_password"}
WORKSPACE = "default"
ROLES = {  # role -> (account, [(resource type, pattern, permission)])
    "tans-writer": ("writer", [("workspace", "*", "USE"), ("experiment", "*", "EDIT"),
                               ("registered_model", "*", "EDIT")]),
    "tans-reader": ("reader", [("experiment", "*", "READ"), ("registered_model", "*", "READ")]),
}
AUTH_CONFIG = "basic_auth.ini"


def write_secrets(folder: str | Path) -> dict[str, str]:
    """Create every missing secret file in ``folder`` (a random URL-safe token, mode 0600); keep the ones
    there. Returns ``{name: "created" | "kept"}``; never returns nor prints a secret."""
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
        os.chmod(out, 0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create the secrets folder {out}: {exc.strerror}; pass a writable folder") from exc
    status = {}
    for name in SECRET_FILES:
        path = out / name
        if path.is_file() and path.read_text().strip():
            status[name] = "kept"
            continue
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        status[name] = "created"
    return status


def read_secret(folder: str | Path, name: str) -> str:
    """One secret of ``folder``; a clear error when it is missing or readable by others."""
    path = Path(folder) / name
    if not path.is_file():
        raise ConfigError(f"the secret {path} is missing: create the team's secrets with `tans team secrets "
                          f"{folder}` (or put the value in that file)")
    if path.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH):  # Docker secrets are 0444: readable, never writable
        raise ConfigError(f"the secret {path} is writable by other users: `chmod 600 {path}` and start again")
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the secret {path} ({exc.strerror}): run as a user that can") from None
    if not value:
        raise ConfigError(f"the secret {path} is empty: delete it and run `tans team secrets {folder}` again")
    return value


AUTH_CACHE_SECONDS = 60


def auth_config(path: Path, database_uri: str, cache_seconds: int = AUTH_CACHE_SECONDS) -> Path:
    """MLflow's basic-auth configuration: no permission unless granted, the users in ``database_uri``; a
    verified (user, password) pair is trusted for ``cache_seconds`` in each server worker (0: every request
    pays the password hash: scrypt, ~0.1 s of CPU on a 2-core EPYC, for each of a build's hundreds of requests)."""
    if cache_seconds < 0:
        raise ConfigError(f"the credential cache's lifetime must be >= 0 seconds; got {cache_seconds}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:  # configparser reads it: a % must be doubled
        f.write("[mlflow]\n"
                "default_permission = NO_PERMISSIONS\n"
                f"database_uri = {database_uri.replace('%', '%%')}\n"
                "admin_username = admin\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                f"auth_cache_ttl_seconds = {int(cache_seconds)}\n")
    return path


AUTH_OPTIONS = ["--app-name", "basic-auth", "--enable-workspaces"]


def server_env(secrets_dir: str | Path, config_path: Path) -> dict[str, str]:
    """The environment ``mlflow server --app-name basic-auth`` needs (admin password for the first start,
    the CSRF key of its login forms, the auth configuration); no job runner."""
    return {"MLFLOW_AUTH_CONFIG_PATH": str(config_path),
            "MLFLOW_AUTH_ADMIN_PASSWORD": read_secret(secrets_dir, "admin_password"),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": read_secret(secrets_dir, "flask_secret_key"),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@dataclass(frozen=True)
class Provisioned:
    created_users: tuple[str, ...]
    created_roles: tuple[str, ...]


def provision(uri: str, secrets_dir: str | Path) -> Provisioned:
    """Give the server at ``uri`` its ``writer`` and ``reader`` accounts and their roles (idempotent: what
    exists is kept; a password changed in the secrets folder is set again)."""
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"] = "admin"
    os.environ["MLFLOW_TRACKING_PASSWORD"] = read_secret(secrets_dir, "admin_password")
    users, roles = [], []
    try:
        client = AuthServiceClient(uri)
        for user, secret in ACCOUNTS.items():
            password = read_secret(secrets_dir, secret)
            try:
                client.get_user(user)
                client.update_user_password(user, password)
            except MlflowException as exc:
                if "RESOURCE_DOES_NOT_EXIST" not in str(getattr(exc, "error_code", "")) and "not found" not in str(exc).lower():
                    raise
                client.create_user(user, password)
                users.append(user)
        existing = {r.name: r for r in client.list_roles(WORKSPACE)}
        for role, (user, grants) in ROLES.items():
            r = existing.get(role)
            if r is None:
                r = client.create_role(WORKSPACE, role, description=f"tans-registry: the {user} account's rights")
                roles.append(role)
            have = {(p.resource_type, p.resource_pattern): p for p in client.list_role_permissions(r.id)}
            for rtype, pattern, permission in grants:
                p = have.get((rtype, pattern))
                if p is None:
                    client.add_role_permission(r.id, rtype, pattern, permission)
                elif p.permission != permission:
                    client.update_role_permission(p.id, permission)
            if role not in {x.name for x in client.list_user_roles(user)}:
                client.assign_role(user, r.id)
    except MlflowException as exc:
        if "401" in str(exc) or getattr(exc, "error_code", "") == "UNAUTHENTICATED":
            raise TrackingError(f"the server at {uri} refused the admin account with the password in "
                                f"{Path(secrets_dir) / 'admin_password'} (changed since the first start, e.g. in the "
                                "MLflow UI?): write the admin's current password into that file and start again") from None
        raise TrackingError(f"cannot set up the team accounts on {uri}: {str(exc).splitlines()[0][:300]}") from exc
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Provisioned(tuple(users), tuple(roles))


def run_server(backend_store_uri: str, artifacts_destination: str, secrets_dir: str | Path, host: str = "127.0.0.1",
               port: int = 5000, workers: int | None = None, allowed_hosts: tuple[str, ...] = (),
               auth_database_uri: str | None = None, mlflow_exe: str | None = None, ready_timeout_s: float = 180.0,
               auth_cache_seconds: int = AUTH_CACHE_SECONDS, log=print) -> int:
    """Run the authenticated tracking server until it stops (or SIGTERM/SIGINT stops it): write the auth
    configuration beside the secrets, start ``mlflow server`` with the auth options, wait for its health
    check, provision the accounts, then wait. The database password goes to the server as ``PGPASSWORD``
    (from the ``postgres_password`` secret, when the URI names a user but no password): never on a command
    line. Returns the server's exit status."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from . import tracking

    import tempfile

    secrets_dir = Path(secrets_dir)
    env = dict(os.environ)
    private = Path(tempfile.mkdtemp(prefix="tans-team-"))  # 0700; the secrets folder may be read-only
    try:
        env.update(server_env(secrets_dir, auth_config(private / AUTH_CONFIG, auth_database_uri or backend_store_uri,
                                                         auth_cache_seconds)))
        if (secrets_dir / "postgres_password").is_file() and backend_store_uri.startswith("postgresql") \
                and "PGPASSWORD" not in os.environ:
            env["PGPASSWORD"] = read_secret(secrets_dir, "postgres_password")
        exe = mlflow_exe or str(Path(sys.executable).with_name("mlflow"))
        cmd = tracking.server_command(backend_store_uri, artifacts_destination, host=host, port=port, mlflow_exe=exe,
                                      workers=workers, allowed_hosts=list(allowed_hosts) or None) + AUTH_OPTIONS
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        stopping = []

        def stop(signum, _frame):
            stopping.append(signum)
            tracking.stop_process_group(proc)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        local = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + ready_timeout_s
        while proc.poll() is None and not stopping:
            try:
                with opener.open(f"{local}/health", timeout=5):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    tracking.stop_process_group(proc)
                    raise TrackingError(f"`mlflow server` did not answer {local}/health within {ready_timeout_s:.0f} s")
                time.sleep(0.5)
        if proc.poll() is None and not stopping:
            try:
                done = provision(local, secrets_dir)
            except Exception:
                tracking.stop_process_group(proc)
                raise
            log(f"tans team server: ready on {local} (accounts admin, writer, reader; new: "
                f"{', '.join(done.created_users) or 'none'}; secrets in {secrets_dir})")
        return proc.wait()
    finally:
        import shutil

        shutil.rmtree(private, ignore_errors=True)
