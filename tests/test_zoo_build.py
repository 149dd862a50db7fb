"""Zoo building end to end on tiny real data: MLflow records, listing, loading, resume, PostgreSQL."""
from __future__ import annotations

import collections
import json
import time

import mlflow
import numpy as np
import pytest

from tans_registry import tracking
from tans_registry.data import load_dataset
from tans_registry.zoo.build import build_zoo
from tans_registry.zoo.config import ZooConfig
from tans_registry.zoo.store import list_networks, load_network
from tans_registry.zoo import build as build_mod
from tans_registry.zoo.measure import accuracy
from tans_registry.zoo.generalist import DATASET as POOLED
from tans_registry.zoo.generalist import GROUP as GENERALIST
from tans_registry.zoo.generalist import TEST_PER_DATASET, pooled
from tans_registry.zoo.store import COMPLETE_TAG, load_functional_embeddings, read_table
from tans_registry.zoo.tensors import DEFAULT_MEAN, DEFAULT_STD


def tiny(data_dir, work_dir, datasets=("digits", "cells"), **kw):
    kw = {"subnets": 3, "epochs": 1, "base_epochs": 0, **kw}
    return ZooConfig(profile="quick", datasets=datasets, data_dir=str(data_dir), work_dir=str(work_dir),
                     progress=False, **kw)


@pytest.fixture(scope="module")
def built(tiny_data_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("zoo-work")
    rec = build_zoo(tiny(tiny_data_dir, work))
    return work, rec


def test_build_records_every_group_as_a_run(built):
    work, rec = built
    assert [g.group for g in rec.groups] == ["digits", "cells"]
    assert all(g.status == "built" and g.n_networks == 3 for g in rec.groups)
    assert (work / "mlflow.db").exists()
    tracking.setup(work)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("tans/zoo")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags[COMPLETE_TAG] == "true"
        assert run.data.params["subnets"] == "3" and run.data.params["probe_seed"] == "777"
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [m.step for m in history] == [1]  # one point per epoch
        names = {f.path for f in client.list_artifacts(run.info.run_id, "zoo")}
        assert names == {"zoo/supernet.safetensors", "zoo/bn.safetensors", "zoo/embeddings.safetensors", "zoo/images.safetensors",
                         "zoo/zoo.json"}
        assert 0.0 <= run.data.metrics["best_acc"] <= 1.0


def test_zoo_rows_hold_measurements(built):
    work, rec = built
    tracking.setup(work)
    exp_id = tracking.experiment_id("zoo", work)
    nets = list_networks(exp_id)
    assert len(nets) == 6
    digits = [n for n in nets if n.group == "digits"]
    assert [n.index for n in digits] == [0, 1, 2]
    assert digits[0].n_params < digits[-1].n_params and digits[0].flops < digits[-1].flops
    assert all(len(n.topology) == 45 for n in nets)
    assert list_networks(exp_id, dataset="cells") == [n for n in nets if n.group == "cells"]
    limit = digits[1].n_params
    assert all(n.n_params <= limit for n in list_networks(exp_id, max_params=limit))
    emb = load_functional_embeddings(digits[0].run_id)
    assert emb.shape == (3, 1280) and np.isfinite(emb).all()


def test_loaded_network_reproduces_its_recorded_accuracy(built, tiny_data_dir):
    work, _ = built
    tracking.setup(work)
    nets = list_networks(tracking.experiment_id("zoo", work), dataset="digits")
    ds = load_dataset("digits", data_dir=tiny_data_dir, max_train=800, max_test=300)
    for net in nets:
        module = load_network(net.run_id, net.index)
        acc = accuracy(module, ds.x_test, ds.y_test, DEFAULT_MEAN, DEFAULT_STD)
        assert acc == pytest.approx(net.accuracy, abs=1e-9)


def test_resume_after_an_interrupted_build(tiny_data_dir, tmp_path, monkeypatch):
    work = tmp_path / "w"
    first = build_zoo(tiny(tiny_data_dir, work, subnets=2, datasets=("digits",)))
    digits_run = first.groups[0].run_id

    real = build_mod._measure_all

    def crash_on_cells(net, spec, group, profile, cfg):
        if group.name == "cells":
            raise KeyboardInterrupt("killed while measuring cells")
        return real(net, spec, group, profile, cfg)

    monkeypatch.setattr(build_mod, "_measure_all", crash_on_cells)
    with pytest.raises(KeyboardInterrupt):
        build_zoo(tiny(tiny_data_dir, work, subnets=2, resume=True))
    tracking.setup(work)
    client = mlflow.MlflowClient()
    exp_id = tracking.experiment_id("zoo", work)
    cells = client.search_runs([exp_id], "tags.`tans.group` = 'cells'")
    assert len(cells) == 1 and cells[0].info.status in ("FAILED", "KILLED")
    assert COMPLETE_TAG not in cells[0].data.tags
    assert {n.group for n in list_networks(exp_id)} == {"digits"}  # nothing half-written is listed

    monkeypatch.setattr(build_mod, "_measure_all", real)
    again = build_zoo(tiny(tiny_data_dir, work, subnets=2, resume=True))
    status = {g.group: (g.status, g.run_id) for g in again.groups}
    assert status["digits"] == ("skipped", digits_run)
    assert status["cells"][0] == "built"
    assert {n.group for n in list_networks(exp_id)} == {"digits", "cells"}


def test_resume_rebuilds_a_group_whose_settings_changed(tiny_data_dir, tmp_path):
    work = tmp_path / "w"
    build_zoo(tiny(tiny_data_dir, work, datasets=("cells",), subnets=2))
    rec = build_zoo(tiny(tiny_data_dir, work, datasets=("cells",), subnets=2, resume=True, seed=1))
    assert rec.groups[0].status == "built"


@pytest.mark.postgres
def test_build_and_list_on_postgresql(tiny_data_dir, tmp_path, monkeypatch, pg_database):
    import psycopg

    monkeypatch.setenv("MLFLOW_TRACKING_URI", pg_database)
    rec = build_zoo(tiny(tiny_data_dir, tmp_path / "w", datasets=("cells",)))
    assert rec.tracking_uri.startswith("postgresql+psycopg://")
    work, _ = tracking.setup(tmp_path / "w")
    nets = list_networks(tracking.experiment_id("zoo", work))
    assert [n.group for n in nets] == ["cells"] * 3
    assert load_network(nets[0].run_id, 0) is not None
    with psycopg.connect(pg_database.replace("+psycopg", "")) as conn:
        (n_runs,) = conn.execute("select count(*) from runs where status = 'FINISHED'").fetchone()
        (name,) = conn.execute("select name from experiments where name = 'tans/zoo'").fetchone()
    assert n_runs == 1 and name == "tans/zoo"
    table = json.loads((tmp_path / "w" / "mlruns").joinpath("tans-zoo").glob("*/artifacts/zoo/zoo.json").__next__().read_text())
    assert table["header"]["dataset"] == "cells"


def test_groups_warm_start_from_a_shared_base_supernet(tiny_data_dir, tmp_path):
    work = tmp_path / "w"
    rec = build_zoo(tiny(tiny_data_dir, work, base_epochs=1))
    tracking.setup(work)
    client = mlflow.MlflowClient()
    exp_id = tracking.experiment_id("zoo", work)
    base = client.search_runs([exp_id], "tags.`tans.group` = '__base__'")
    assert len(base) == 1 and base[0].data.params["n_classes"] == "13"  # 10 digits + 3 cells, one head
    for g in rec.groups:
        assert client.get_run(g.run_id).data.params["init"] == "base"
    # other per-group settings: the groups are rebuilt, the base is reused
    # the base's own subnets: a group of their own, the same architectures as every group, measured on the
    # pooled test images with the joint head
    gen = rec.generalist
    assert gen is not None and gen.group == GENERALIST and gen.dataset == POOLED and gen.status == "built"
    assert gen.n_networks == 3 and 0.0 <= gen.min_accuracy <= gen.best_accuracy <= 1.0 and rec.n_networks == 9
    run = client.get_run(gen.run_id)
    assert run.data.tags["tans.base_run"] == base[0].info.run_id and run.data.params["sources"] == "digits,cells"
    table = read_table(gen.run_id)
    assert len(table["header"]["classes"]) == 13 and table["header"]["classes"][0].startswith("digits/")
    archs = {g: [n.arch_hash for n in list_networks(exp_id) if n.group == g] for g in ("digits", "cells", GENERALIST)}
    assert archs[GENERALIST] == archs["digits"] == archs["cells"]
    sources = [load_dataset(n, data_dir=tiny_data_dir, seed=0, max_train=1200, max_test=400) for n in ("digits", "cells")]
    data = pooled(sources, 0)
    assert data.fingerprint() == run.data.tags["tans.fingerprint"] and data.n_classes == 13
    assert len(data.x_test) == sum(min(len(s.x_test), TEST_PER_DATASET) for s in sources)
    net = load_network(gen.run_id, 0)  # the base's weights, the batch norm measured on pooled images
    assert accuracy(net, data.x_test, data.y_test, DEFAULT_MEAN, DEFAULT_STD) == pytest.approx(table["networks"][0]["accuracy"])
    # other per-group settings: the groups are rebuilt, the base is reused, the generalist re-cut at 2 networks
    again = build_zoo(tiny(tiny_data_dir, work, base_epochs=1, resume=True, subnets=2))
    assert all(g.status == "built" and g.n_networks == 2 for g in again.groups)
    assert again.generalist.status == "built" and again.generalist.n_networks == 2
    assert len(client.search_runs([exp_id], "tags.`tans.group` = '__base__'")) == 1
    assert {n.group for n in list_networks(exp_id)} == {"digits", "cells", GENERALIST}
    # resumed with the same settings: nothing rebuilt; --only-groups can name the generalist alone
    assert build_zoo(tiny(tiny_data_dir, work, base_epochs=1, resume=True, subnets=2)).generalist.status == "skipped"
    only = build_zoo(tiny(tiny_data_dir, work, base_epochs=1, subnets=2, only_groups=(GENERALIST,)))
    assert only.groups == () and only.generalist.status == "built"


def test_a_build_is_reproducible_from_its_seed(tiny_data_dir, tmp_path):
    a = build_zoo(tiny(tiny_data_dir, tmp_path / "a", datasets=("cells",), subnets=2))
    b = build_zoo(tiny(tiny_data_dir, tmp_path / "b", datasets=("cells",), subnets=2))
    tracking.setup(tmp_path / "a")
    acc_a = [n.accuracy for n in list_networks(tracking.experiment_id("zoo", tmp_path / "a"))]
    tracking.setup(tmp_path / "b")
    acc_b = [n.accuracy for n in list_networks(tracking.experiment_id("zoo", tmp_path / "b"))]
    assert acc_a == acc_b and a.groups[0].best_accuracy == b.groups[0].best_accuracy


def test_workers_build_groups_in_parallel_processes_from_the_base(tiny_data_dir, tmp_path):
    import mlflow

    work = tmp_path / "w"
    rec = build_zoo(tiny(tiny_data_dir, work, base_epochs=0.5, workers=2))
    assert [g.group for g in rec.groups] == ["digits", "cells"]  # the record keeps the groups' order
    assert all(g.status == "built" and g.n_networks == 3 for g in rec.groups)
    tracking.setup(work)
    exp_id = tracking.experiment_id("zoo", work)
    client = mlflow.MlflowClient()
    for g in rec.groups:
        run = client.get_run(g.run_id)
        assert run.info.status == "FINISHED" and run.data.tags[COMPLETE_TAG] == "true"
        assert run.data.params["init"] == "base"  # the workers loaded the base supernet
    assert {n.group for n in list_networks(exp_id)} == {"digits", "cells", GENERALIST}
    again = build_zoo(tiny(tiny_data_dir, work, base_epochs=0.5, workers=2, resume=True))
    assert [g.status for g in again.groups] == ["skipped", "skipped"] and again.generalist.status == "skipped"


_Built = collections.namedtuple("_Built", "group best_accuracy")
_Group = collections.namedtuple("_Group", "name seconds")


def _sleepy_build(group, profile, cfg, exp_id, chash, base):
    """A worker's group build that takes ``group.seconds`` (module level: the spawned workers import it)."""
    time.sleep(group.seconds)
    return _Built(group.name, 0.5)


class _Bar:
    def __init__(self):
        self.updates: list[float] = []

    def update(self, n):
        self.updates.append(time.monotonic())

    def set_postfix_str(self, s):
        pass


def test_workers_report_each_group_as_it_finishes(tmp_path):
    """The progress bar moves when a group is done, not once every group is (session 9: it sat at 0/45 for
    a 55-minute build, then jumped to 45)."""
    from tans_registry.zoo.workers import build_in_workers

    cfg = ZooConfig(work_dir=str(tmp_path), workers=2, progress=False)
    bar, results = _Bar(), {}
    todo = [(_Group("fast", 0.0), "h1"), (_Group("slow", 6.0), "h2")]
    build_in_workers(_sleepy_build, todo, None, cfg, "0", f"sqlite:///{tmp_path}/m.db", None, results, bar)
    assert set(results) == {"fast", "slow"} and len(bar.updates) == 2
    assert bar.updates[1] - bar.updates[0] > 3.0  # the fast group was counted while the slow one slept


def test_workers_must_be_positive(tiny_data_dir, tmp_path):
    from tans_registry.errors import ConfigError

    with pytest.raises(ConfigError, match="--workers"):
        build_zoo(tiny(tiny_data_dir, tmp_path / "w", workers=0))


def test_many_class_groups_get_a_step_floor():
    from tans_registry.zoo.profiles import TrainConfig
    from tans_registry.zoo.train import n_train_steps

    cfg = TrainConfig(epochs=6, batch_size=64, steps_per_class=20, max_epochs=30)
    assert n_train_steps(2500, 5, cfg) == 6 * 40              # 5 classes: the epochs decide
    assert n_train_steps(2100, 20, cfg) == 400                # 20 classes: 20 steps each
    assert n_train_steps(700, 48, cfg) == 30 * 11             # capped at 30 passes
    assert n_train_steps(2100, 20, TrainConfig(epochs=6, steps_per_class=0)) == 6 * 33


def test_long_schedules_are_the_ones_the_step_floor_raised():
    from tans_registry.zoo.profiles import TrainConfig
    from tans_registry.zoo.train import is_long_schedule

    cfg = TrainConfig(epochs=6, batch_size=64, steps_per_class=20, max_epochs=30)
    assert not is_long_schedule(2500, 5, cfg)    # 240 steps by the epochs: regular
    assert is_long_schedule(2100, 20, cfg)       # gtsrb's tasks: 400 steps instead of 198
    assert not is_long_schedule(2100, 20, TrainConfig(epochs=6, steps_per_class=0))


def test_only_groups_builds_the_named_groups_and_resume_adds_the_rest(tiny_data_dir, tmp_path):
    from tans_registry.errors import ConfigError

    work = tmp_path / "w"
    with pytest.raises(ConfigError, match="no group named 'nope'.*digits, cells"):
        build_zoo(tiny(tiny_data_dir, work, only_groups=("nope",)))
    rec = build_zoo(tiny(tiny_data_dir, work, only_groups=("cells",)))
    assert [(g.group, g.status) for g in rec.groups] == [("cells", "built")]
    tracking.setup(work)
    assert {n.group for n in list_networks(tracking.experiment_id("zoo", work))} == {"cells"}
    rest = build_zoo(tiny(tiny_data_dir, work, resume=True))
    assert [(g.group, g.status) for g in rest.groups] == [("digits", "built"), ("cells", "skipped")]
