"""Shared fixtures: tiny real datasets, isolated work directories, the PostgreSQL server."""
from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from tans_registry.data import load_dataset

PG_URL = os.environ.get("TANS_TEST_PG", "postgresql://root@127.0.0.1:5432/postgres")


def _save(ds, path):
    np.savez_compressed(path, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test,
                        classes=np.array(ds.classes), source=np.array(ds.source),
                        license=np.array("see tans_registry/demo_data/README.md"), meta=np.array("{}"))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """Two small real datasets (cut from the demo set): 'digits' (mnist) and 'cells' (bccd_cells)."""
    out = tmp_path_factory.mktemp("tiny-data")
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


def tiny_pipeline(work, data_dir, index: bool = False):
    """A real tiny pipeline in ``work``: 4 zoo groups (three class-subset tasks of digits, cells whole)
    x 3 networks, registered, encoders trained (cells held out), and with ``index`` the index built.
    Returns the encoders' training record."""
    from tans_registry import (EncoderConfig, EncoderTrainConfig, IndexConfig, RegisterConfig, ZooConfig, build_index,
                               build_zoo, register_zoo, train_encoders)

    build_zoo(ZooConfig(profile="quick", base_epochs=0, datasets=("digits", "cells"), subnets=3, epochs=1, groups=4,
                        data_dir=str(data_dir), work_dir=str(work), progress=False))
    register_zoo(RegisterConfig(work_dir=str(work), progress=False))
    rec = train_encoders(EncoderTrainConfig(encoder=EncoderConfig(k_per_class=4), steps=6, eval_every=3,
                                            val_datasets=("cells",), backbone_epochs=0.5, work_dir=str(work),
                                            data_dir=str(data_dir), progress=False))
    if index:
        build_index(IndexConfig(work_dir=str(work), progress=False))
    return rec
