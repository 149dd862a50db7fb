"""`--executor ray` on a real local Ray cluster (2 CPUs): the zoo build fans out one task per group and
builds the same networks as the local executor; a query fine-tunes its candidates as Ray tasks."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import tiny_work

pytestmark = pytest.mark.ray


def _networks(work):
    """Per group: its dataset, and each network's architecture and parameter count."""
    import mlflow

    from tans_registry import tracking
    from tans_registry.zoo import store

    _, uri = tracking.setup(str(work))
    runs = store.finished_group_runs(tracking.experiment_id("zoo", work))
    out = {}
    for g, r in runs.items():
        table = store.read_table(r.info.run_id)
        out[g] = (r.data.tags["tans.dataset"], r.data.tags["tans.executor"], r.data.params["device"],
                  [(json.dumps(n["arch"], sort_keys=True), n["n_params"]) for n in table["networks"]])
    mlflow.set_tracking_uri(None)
    return out


def _build(work, data_dir, *extra):
    cmd = [sys.executable, "-m", "tans_registry.cli", "zoo", "build", "--profile", "quick", "--base-epochs", "0", "--datasets", "digits,cells",
           "--subnets", "3", "--epochs", "1", "--groups", "4", "--data-dir", str(data_dir), "--work-dir", str(work),
           "--json", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"RAY_ADDRESS": ""}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def local_pipeline(tiny_templates, tmp_path_factory):
    """The session's tiny pipeline, built with the local executor (zoo, registry, encoders, index): a copy."""
    return tiny_work(tiny_templates, "indexed", tmp_path_factory.mktemp("local") / "work")


def test_ray_builds_the_same_networks_as_local(local_pipeline, tiny_data_dir, tmp_path):
    """conftest.build_stage's build and this one: same profile, datasets, groups, subnets, epochs and seed."""
    import torch

    ray = _build(tmp_path / "ray", tiny_data_dir, "--executor", "ray")
    assert len(ray["groups"]) == 4 and all(g["status"] == "built" for g in ray["groups"])
    a, b = _networks(local_pipeline), _networks(tmp_path / "ray")
    assert set(a) == set(b) == {g["group"] for g in ray["groups"]}
    for g in a:
        assert a[g][0] == b[g][0] and a[g][3] == b[g][3], g      # dataset, architectures, parameter counts
        assert (a[g][1], b[g][1]) == ("local", "ray")           # each run records its executor
        assert a[g][2] == b[g][2] == ("cuda" if torch.cuda.is_available() else "cpu")  # and its device


def test_bad_executor_values_are_refused(tiny_data_dir, tmp_path):
    from click.testing import CliRunner

    from tans_registry.cli import main

    r = CliRunner().invoke(main, ["zoo", "build", "--ray-address", "127.0.0.1:1", "--work-dir", str(tmp_path)])
    assert r.exit_code == 2 and "--executor ray" in r.output
    r = CliRunner().invoke(main, ["zoo", "build", "--executor", "spark", "--work-dir", str(tmp_path)])
    assert r.exit_code == 2 and "spark" in r.output
    # an address nothing listens on: one clear line, nothing built
    r = CliRunner().invoke(main, ["zoo", "build", "--profile", "quick", "--base-epochs", "0", "--datasets", "digits", "--subnets", "2",
                                  "--epochs", "1", "--groups", "2", "--data-dir", str(tiny_data_dir), "--work-dir",
                                  str(tmp_path), "--executor", "ray", "--ray-address", "127.0.0.1:1"])
    assert r.exit_code == 1 and "cannot reach Ray at 127.0.0.1:1" in r.output and "ray start --head" in r.output


def test_query_fine_tunes_its_candidates_as_ray_tasks(local_pipeline, tiny_data_dir):
    import mlflow

    from tans_registry import tracking

    work = local_pipeline
    cmd = [sys.executable, "-m", "tans_registry.cli", "query", "cells", "--top-k", "2", "--finetune", "2", "--epochs",
           "1", "--no-export", "--executor", "ray", "--data-dir", str(tiny_data_dir), "--work-dir", str(work), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"RAY_ADDRESS": ""}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rec = json.loads(done.stdout)
    assert len(rec["finetuned"]) == 2 and rec["winner"]["model_uri"].startswith("models:/tans-finetuned.cells/")
    tracking.setup(str(work))
    client = mlflow.MlflowClient()
    exp = tracking.experiment_id("queries", work)
    children = client.search_runs([exp], "tags.`tans.kind` = 'finetune'")
    assert len(children) == 2
    tasks = {c.data.tags.get("tans.ray_task") for c in children}
    assert None not in tasks and len(tasks) == 2                    # two distinct Ray tasks
    query_run = client.get_run(rec["query"]["run_id"])
    assert query_run.data.params["executor"] == "ray"
    import torch

    assert {c.data.tags.get("tans.device") for c in children} == {"cuda" if torch.cuda.is_available() else "cpu"}
    # the winner's weights came back from the task and load
    model = mlflow.pyfunc.load_model(rec["winner"]["model_uri"])
    assert model.get_raw_model() is not None


def test_the_transfer_table_runs_its_starts_as_ray_tasks_and_writes_the_local_records(local_pipeline, tiny_data_dir,
                                                                                      tmp_path):
    """`tans zoo transfer --executor ray`: one Ray task a start; the same records (keys: task, start, budget,
    settings as asked) as the local executor writes, so that --resume carries across executors."""
    from tans_registry.transfer.config import TransferConfig
    from tans_registry.transfer.stage import build_table

    work = local_pipeline
    cmd = [sys.executable, "-m", "tans_registry.cli", "zoo", "transfer", "--starts", "2", "--epochs", "1", "--max-train",
           "60", "--max-test", "30", "--executor", "ray", "--data-dir", str(tiny_data_dir), "--work-dir", str(work),
           "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"RAY_ADDRESS": ""}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rec = json.loads(done.stdout)
    assert rec["written"] == rec["records"] == 4 and rec["kept"] == 0
    # the local executor, resuming, finds every record the Ray tasks wrote and writes none again
    local = build_table(TransferConfig(starts=2, epochs=1, max_train=60, max_test=30, workers=1, resume=True,
                                       work_dir=str(work), data_dir=str(tiny_data_dir), progress=False))
    assert local.written == 0 and local.kept == 4


def test_cuda_is_refused_where_no_device_answers(tiny_data_dir, tmp_path):
    """Asking for CUDA where none answers is one clear line before anything is written; auto takes the CPU
    there (every run above recorded `cpu`: the CPU path is the device path with `cpu` chosen)."""
    import torch
    from click.testing import CliRunner

    from tans_registry.cli import main
    from tans_registry.device import resolve

    assert str(resolve("cpu")) == "cpu"
    assert str(resolve("auto")) == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert str(resolve("cuda")) == "cuda"
        return
    for cmd in (["zoo", "build", "--profile", "quick", "--base-epochs", "0", "--datasets", "digits", "--data-dir", str(tiny_data_dir)],
                ["query", "digits", "--data-dir", str(tiny_data_dir)],
                ["bench", "--query-data", str(tiny_data_dir / "digits.npz")],
                ["encoders", "train", "--data-dir", str(tiny_data_dir)]):
        r = CliRunner().invoke(main, cmd + ["--device", "cuda", "--work-dir", str(tmp_path / "w")])
        assert r.exit_code != 0 and "--device cuda: no CUDA device answers here" in r.output, (cmd, r.output)
    assert not (tmp_path / "w" / "mlflow.db").exists()


def test_a_failing_task_raises_our_error_and_tasks_see_the_clusters_device(monkeypatch):
    """A task's TansError reaches the command as itself (its code and one-line message, not Ray's traceback);
    results come back in the jobs' order; the tasks' device is the cluster's (Ray hides GPUs from a task that
    asks for none)."""
    from tans_registry.errors import ConfigError, TansError
    from tans_registry.executor import Executor, on_task_device, parallel_map, ray_session, task_device

    monkeypatch.setenv("RAY_ADDRESS", "")

    def _fails(job):  # nested: pickled by value for the Ray workers (this test module is not importable there)
        from tans_registry.errors import TansError

        if job == "bad":
            raise TansError("group g cannot be built: its artifacts are gone", code="ZOO_ARTIFACTS")
        return job * 2

    with ray_session(None) as resources:
        assert resources.get("CPU", 0) >= 1
        assert list(parallel_map(_fails, [3, 1, 2], 2, Executor("ray"))) == [6, 2, 4]
        with pytest.raises(TansError) as err:
            list(parallel_map(_fails, [1, "bad", 2], 2, Executor("ray")))
        assert err.value.code == "ZOO_ARTIFACTS" and str(err.value) == "group g cannot be built: its artifacts are gone"
        assert task_device("cpu") == ("cpu", 0.0)
        # the jobs' device is written where a job names one (its own and its settings'), nowhere else
        jobs, gpus = on_task_device([{"device": "auto", "n": 1}, {"settings": {"device": "auto", "seed": 0}}, {"n": 3}],
                                    "cpu")
        assert gpus == 0.0 and jobs == [{"device": "cpu", "n": 1}, {"settings": {"device": "cpu", "seed": 0}}, {"n": 3}]
        if resources.get("GPU", 0) < 1:
            assert task_device("auto") == ("cpu", 0.0)
            with pytest.raises(ConfigError, match="the Ray cluster has no GPU"):
                task_device("cuda")
        else:
            assert task_device("auto") == ("cuda", 1.0)
