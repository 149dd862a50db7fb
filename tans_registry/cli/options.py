"""What every command shares: parameter types, the --work-dir/--data-dir options and the error mapping,
and defaults read from the stages' configs (so a default is written once, in its config)."""
from __future__ import annotations

import dataclasses
import functools
import sys

import click

from ..errors import ParamError, TansError


class _IntLike(click.ParamType):
    """An integer that also accepts "20.0" (MLproject's numeric parameters are floats)."""

    name = "integer"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not an integer", param, ctx)
        if not f.is_integer():
            self.fail(f"{value!r} is not an integer", param, ctx)
        return int(f)


class _Limit(click.ParamType):
    """An optional upper limit: ``inner``, or ``none`` for no limit (what the MLproject passes by
    default; 0 and negative limits are refused by the stage's config)."""

    def __init__(self, inner: click.ParamType):
        self.inner = inner
        self.name = f"{inner.name}|none"

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
            return None
        return self.inner.convert(value, param, ctx)


class OrDefault(click.ParamType):
    """``inner``, or the word ``default`` (or an empty value) for "not given": the stage's config then
    supplies its own default. What the MLproject passes for a parameter the user did not set, so that
    no default is written twice."""

    def __init__(self, inner):
        self.inner = inner if isinstance(inner, click.ParamType) else click.types.convert_type(inner)
        self.name = self.inner.name

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("default", "")):
            return None
        return self.inner.convert(value, param, ctx)

    def get_metavar(self, param, ctx=None):
        return self.inner.get_metavar(param, ctx) if hasattr(self.inner, "get_metavar") else None


INT = _IntLike()
LIMIT = _Limit(INT)
FLOAT_LIMIT = _Limit(click.FLOAT)


def from_command_line(name: str) -> bool:
    """Whether the option ``name`` of the running command was given on the command line (not defaulted)."""
    from click.core import ParameterSource

    return click.get_current_context().get_parameter_source(name) in (ParameterSource.COMMANDLINE,
                                                                     ParameterSource.ENVIRONMENT)


def given(**values) -> dict:
    """The values the user gave (not None): the config's defaults fill in the rest."""
    return {k: v for k, v in values.items() if v is not None}


def split(csv: str | None) -> tuple[str, ...] | None:
    """``"a, b,"`` -> ``("a", "b")``; empty or None -> None."""
    names = tuple(v.strip() for v in csv.split(",") if v.strip()) if csv else ()
    return names or None


def default(cls, name: str):
    """The default of field ``name`` of the dataclass ``cls``: the one source of a CLI default."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()


def as_json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")(fn)


work_dir_option = click.option(
    "--work-dir", envvar="TANS_WORK_DIR", type=click.Path(file_okay=False), default=None,
    help="Folder of the embedded store: <work dir>/mlflow.db and <work dir>/mlruns [env TANS_WORK_DIR; default: the "
         "current directory, MLflow's own default]. MLFLOW_TRACKING_URI, when set, names the tracking store instead.")
data_dir_option = click.option(
    "--data-dir", envvar="TANS_DATA_DIR", type=click.Path(file_okay=False), default=None,
    help="Folder of .npz datasets [env TANS_DATA_DIR; default: the demo set shipped with the package].")


def handles_errors(fn):
    """The one place a :class:`TansError` becomes a message: exit 2 for a bad parameter value, 1 otherwise."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TansError as exc:
            click.echo(f"error [{exc.code}]: {exc}", err=True)
            sys.exit(2 if isinstance(exc, ParamError) else 1)
        except Exception as exc:
            # a tracking server's refusal (HTTP 401/403) from a call outside the registry boundary (a run
            # logged by a stage): one line, like every other error the user can cause
            from .. import tracking

            import mlflow

            denied = tracking.refusal(mlflow.get_tracking_uri(), exc)
            if denied is None:
                raise
            click.echo(f"error [TRACKING]: {denied}", err=True)
            sys.exit(1)

    return wrapper


def store_options(fn):
    """--work-dir, for commands that use the store only."""
    return work_dir_option(handles_errors(fn))


def data_options(fn):
    """--data-dir, for commands that read datasets only."""
    return data_dir_option(handles_errors(fn))


def common_options(fn):
    """--work-dir and --data-dir, for commands that use both."""
    return work_dir_option(data_dir_option(handles_errors(fn)))


def executor_options(fn):
    """--executor and --ray-address, for commands that fan work out."""
    fn = click.option("--ray-address", default=None, metavar="HOST:PORT",
                      help="The Ray cluster's head (`ray start --head` prints it) [default: RAY_ADDRESS, else a "
                           "local cluster started for this command]. Only with --executor ray.")(fn)
    return click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="local: processes on this machine. ray: one Ray task per job, each logging to the "
                             "same tracking URI (use a tracking server when the cluster spans machines).")(fn)


def device_option(fn):
    """--device, for commands that train or run networks."""
    return click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                        help="Where networks train and run: auto takes CUDA when a device answers, else the CPU; "
                             "cuda without one is refused. Recorded in each run.")(fn)
