"""The ``tans`` command line: a thin click layer; each command parses, calls one API function and prints.

Results go to stdout (``--json``: exactly one JSON document); logs and progress bars go to stderr.
Every :class:`~tans_registry.errors.TansError` becomes a one-line message: exit status 2 for a bad
parameter value or a malformed command line, 1 for the rest.
"""
from __future__ import annotations

import logging
import sys

import click

from . import bench as _bench
from . import data as _data
from . import encoders as _encoders
from . import index as _index
from . import query as _query
from . import serving as _serving
from . import team as _team
from . import zoo as _zoo


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:  # a store error is reported once, as one line; MLflow would also log its traceback
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages to stderr.")
@click.version_option(package_name="tans-registry")
def main(verbose: bool) -> None:
    """tans: which network of our model zoo should we start from for this new dataset?

    The zoo lives in MLflow: by default MLflow's own embedded store in the current directory
    (./mlflow.db and ./mlruns, so `mlflow ui` shows it); --work-dir moves it; MLFLOW_TRACKING_URI points
    at PostgreSQL or a tracking server. The pipeline: `tans zoo build`, `tans zoo register`,
    `tans encoders train`, `tans index build`, `tans query DATA`.
    """
    _setup_logging(verbose)


for _group in (_data.data, _zoo.zoo, _encoders.encoders, _index.index, _team.team):
    main.add_command(_group)
main.add_command(_query.query)
main.add_command(_bench.bench)
main.add_command(_bench.bench_chain)
for _command in (_serving.export, _serving.serve, _serving.predict):
    main.add_command(_command)
