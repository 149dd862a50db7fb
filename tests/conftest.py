"""Shared fixtures: tiny real datasets, isolated work directories, the PostgreSQL server, and one tiny
pipeline built once per test session (shared by the xdist workers) that modules copy."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

# pytest-xdist's workers (two by default, `-n 2` in pyproject) share the cores: each worker's torch, numpy and
# the processes it starts take its share (set before they are imported). Left at the default, every worker's
# torch spins a thread on every core, and the README's test command took ~2x as long on 2 cores.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tans_registry.data import load_dataset  # noqa: E402

TESTS = Path(__file__).resolve().parent

PG_URL = os.environ.get("TANS_TEST_PG", "postgresql://root@127.0.0.1:5432/postgres")


def _save(ds, path):
    np.savez_compressed(path, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test,
                        classes=np.array(ds.classes), source=np.array(ds.source),
                        license=np.array("see tans_registry/demo_data/README.md"), meta=np.array("{}"))


def shared_root(tmp_path_factory, worker_id: str) -> Path:
    """A folder every xdist worker of this session sees (the parent of each worker's base temp)."""
    base = tmp_path_factory.getbasetemp()
    root = (base if worker_id == "master" else base.parent) / "tans-shared"
    root.mkdir(exist_ok=True)
    return root


@contextlib.contextmanager
def once(root: Path, name: str):
    """Yields True to the first process to get here (it makes ``name``), False to the others, which wait
    until it is made; a maker that failed leaves no marker, so the next one tries again."""
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            done = root / f"{name}.done"
            first = not done.is_file()
            yield first
            if first:
                done.write_text("")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory, worker_id):
    """Two small real datasets (cut from the demo set): 'digits' (mnist) and 'cells' (bccd_cells); one folder
    for the whole session (no test writes into it)."""
    root = shared_root(tmp_path_factory, worker_id)
    out = root / "tiny-data"
    with once(root, "tiny-data") as first:
        if first:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            _save(load_dataset("mnist", max_train=96, max_test=60), out / "digits.npz")
            _save(load_dataset("bccd_cells", max_train=64, max_test=45), out / "cells.npz")
    return out


@pytest.fixture(autouse=True)
def _isolated_tracking(monkeypatch, tmp_path):
    """No test touches ./tans-work or a tracking URI from the environment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TANS_DATA_DIR", raising=False)
    monkeypatch.setenv("TANS_WORK_DIR", str(tmp_path / "tans-work"))


@pytest.fixture
def pg_database():
    """A fresh database on the real PostgreSQL server; yields its SQLAlchemy URI, drops it after.

    Fails (never skips) when the server is unreachable: CI starts it in .ci/run.
    """
    import psycopg

    name = f"tans_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL} ({exc}); start it with "
                    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def build_stage(work, data_dir) -> None:
    """The tiny zoo: 4 groups (three class-subset tasks of digits, cells whole) x 3 networks, no base supernet."""
    from tans_registry import ZooConfig, build_zoo

    build_zoo(ZooConfig(profile="quick", base_epochs=0, datasets=("digits", "cells"), subnets=3, epochs=1, groups=4,
                        data_dir=str(data_dir), work_dir=str(work), progress=False))


def base_build_stage(work, data_dir) -> None:
    """The tiny zoo with a small base supernet, so a generalist group: 4 groups and the generalist x 3 networks."""
    from tans_registry import ZooConfig, build_zoo

    build_zoo(ZooConfig(profile="quick", datasets=("digits", "cells"), subnets=3, epochs=1, groups=4, base_epochs=0.5,
                        data_dir=str(data_dir), work_dir=str(work), progress=False))


def train_stage(work, data_dir):
    """The zoo registered and the encoders trained (cells held out for validation); returns the training record."""
    from tans_registry import EncoderConfig, EncoderTrainConfig, RegisterConfig, register_zoo, train_encoders

    register_zoo(RegisterConfig(work_dir=str(work), progress=False))
    return train_encoders(EncoderTrainConfig(encoder=EncoderConfig(k_per_class=4), steps=6, eval_every=3,
                                             val_datasets=("cells",), backbone_epochs=0.5, work_dir=str(work),
                                             data_dir=str(data_dir), progress=False))


def index_stage(work) -> None:
    from tans_registry import IndexConfig, build_index

    build_index(IndexConfig(work_dir=str(work), progress=False))


def clone_work_dir(src: Path, dst: Path) -> Path:
    """A copy of an embedded work directory whose store points at its own artifacts (SQLite rows rewritten).
    The registered zoo versions' files still name the zoo weights of ``src`` (they are covered by their
    digests): ``src`` must outlive the copy and stay as it is. Forgets this process's cached artifact
    locations (by run id: the copy has the same run ids)."""
    shutil.copytree(src, dst)
    db = sqlite3.connect(dst / "mlflow.db")
    tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
    for t in tables:
        for _, col, typ, *_ in db.execute(f"pragma table_info('{t}')").fetchall():
            if "CHAR" in typ.upper() or "TEXT" in typ.upper():
                db.execute(f'update "{t}" set "{col}" = replace("{col}", ?, ?) where "{col}" like ?',
                           (str(src), str(dst), f"%{src}%"))
    db.commit()
    db.close()
    from mlflow.tracking._tracking_service import utils as tracking_utils

    tracking_utils._artifact_repos_cache.clear()
    return dst


TEMPLATE_STAGES = ("built", "trained", "indexed")


@pytest.fixture(scope="session")
def tiny_templates(tmp_path_factory, worker_id, tiny_data_dir) -> Path:
    """The tiny pipeline (:func:`build_stage`, :func:`train_stage`, :func:`index_stage`), built once for the
    session at three stages: ``built`` (the zoo), ``trained`` (registered, encoders trained; its record in
    ``trained.json``) and ``indexed``. Each stage runs in a process of its own (MLflow caches artifact
    locations by run id, and a stage's copy has the previous stage's run ids). Never use a stage in place: :func:`tiny_work` copies it."""
    shared = shared_root(tmp_path_factory, worker_id)
    root = shared / "pipeline"
    with once(shared, "pipeline") as first:
        if first:
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            _stage("built", root / "built", tiny_data_dir)
            clone_work_dir(root / "built", root / "trained")
            _stage("trained", root / "trained", tiny_data_dir)
            clone_work_dir(root / "trained", root / "indexed")
            _stage("indexed", root / "indexed", tiny_data_dir)
    return root


@pytest.fixture(scope="session")
def tiny_base_zoo(tmp_path_factory, worker_id, tiny_data_dir) -> Path:
    """The zoo of :func:`base_build_stage` (a base supernet, so a generalist), built once for the session in a
    process of its own; copy it with :func:`clone_work_dir`, never use it in place."""
    root = shared_root(tmp_path_factory, worker_id)
    work = root / "based"
    with once(root, "based") as first:
        if first:
            shutil.rmtree(work, ignore_errors=True)
            _stage("based", work, tiny_data_dir)
    return work


def run_stage(stage: str, work: str, data_dir: str) -> None:
    """One stage of a shared pipeline in ``work`` (``_stage`` runs it in a process of its own); the ``trained``
    stage writes its record beside ``work`` as JSON."""
    if stage == "trained":
        Path(work + ".json").write_text(json.dumps(train_stage(work, data_dir).to_dict()))
    elif stage == "indexed":
        index_stage(work)
    else:
        {"built": build_stage, "based": base_build_stage}[stage](work, data_dir)


def _stage(stage: str, work: Path, data_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TANS_"))}
    code = "import sys; sys.path.insert(0, sys.argv[1]); import conftest; conftest.run_stage(*sys.argv[2:5])"
    done = subprocess.run([sys.executable, "-c", code, str(TESTS), stage, str(work), str(data_dir)], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"the tiny pipeline's {stage} stage failed:\n{done.stderr[-4000:]}"


def tiny_work(templates: Path, stage: str, dst: Path) -> Path:
    """A private copy of the session's tiny pipeline at ``stage`` (of :data:`TEMPLATE_STAGES`) in ``dst``."""
    if stage not in TEMPLATE_STAGES:
        raise ValueError(f"stage {stage!r}: one of {', '.join(TEMPLATE_STAGES)}")
    return clone_work_dir(templates / stage, dst)


def trained_record(templates: Path):
    """The encoders' training record of the ``trained`` stage (as :func:`train_stage` returns it)."""
    from tans_registry.training.config import EncoderTrainRecord

    d = json.loads((templates / "trained.json").read_text())
    return EncoderTrainRecord(**(d | {"val_datasets": tuple(d["val_datasets"])}))
