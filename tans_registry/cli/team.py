"""`tans team`: the secrets and the authenticated tracking server of a team deployment (docs/teams.md)."""
from __future__ import annotations

import click

from ..team import AUTH_CACHE_SECONDS
from .options import INT, handles_errors


@click.group("team")
def team() -> None:
    """A team's registry that lets no one in without an account: secrets, and the MLflow server.

    `tans team secrets DIR` writes the deployment's secrets (one file each, mode 0600); `tans team server`
    runs `mlflow server --app-name basic-auth` with the accounts admin, writer (builds, registers, moves
    aliases) and reader (serves, predicts). Clients set MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD (or TANS_TRACKING_PASSWORD_FILE).
    """


@team.command("secrets")
@click.argument("folder", type=click.Path(file_okay=False))
@handles_errors
def secrets(folder):
    """Create the missing secrets in FOLDER (kept ones stay): postgres_password, admin_password,
    writer_password, reader_password, flask_secret_key, serve_token. Prints their names, never a value."""
    from ..team import write_secrets

    for name, status in write_secrets(folder).items():
        click.echo(f"{status:8s} {folder}/{name}")


@team.command("server")
@click.option("--backend-store-uri", required=True,
              help="The runs and registry database, e.g. postgresql+psycopg://mlflow@postgres:5432/mlflow (no "
                   "password: it is read from the postgres_password secret and passed as PGPASSWORD).")
@click.option("--artifacts-destination", required=True, help="Where the served artifacts are kept (a folder or URI).")
@click.option("--secrets", "secrets_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="The folder `tans team secrets` wrote (or Docker secrets with the same file names).")
@click.option("--auth-database-uri", default=None,
              help="Where the accounts live [default: the backend store; MLflow keeps them in tables of their own].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless told otherwise).")
@click.option("--port", type=INT, default=5000, show_default=True)
@click.option("--workers", type=INT, default=None, help="uvicorn worker processes [default: MLflow's].")
@click.option("--allowed-hosts", default="", help="Host headers the server accepts, comma-separated (e.g. "
              "mlflow,mlflow:* for a compose service name) [default: MLflow's: loopback and private addresses].")
@click.option("--auth-cache-seconds", type=click.IntRange(min=0), default=AUTH_CACHE_SECONDS, show_default=True,
              help="How long each server worker trusts a verified account and password before hashing it again "
                   "(0: on every request). A password changed or an account deleted through another worker is "
                   "refused there only after this long.")
@handles_errors
def server(backend_store_uri, artifacts_destination, secrets_dir, auth_database_uri, host, port, workers,
           allowed_hosts, auth_cache_seconds):
    """Run the team's MLflow tracking server with authentication until stopped (SIGTERM, Ctrl-C).

    The admin account is created from the admin_password secret on the first start; the writer and reader
    accounts and their roles are set up (again) on every start. Every request but /health needs an account.
    """
    import sys

    from ..team import run_server

    hosts = tuple(h.strip() for h in allowed_hosts.split(",") if h.strip())
    sys.exit(run_server(backend_store_uri, artifacts_destination, secrets_dir, host=host, port=port, workers=workers,
                        allowed_hosts=hosts, auth_database_uri=auth_database_uri,
                        auth_cache_seconds=auth_cache_seconds, log=lambda m: click.echo(m, err=True)))
