"""The `tans` command line: output contracts (one JSON document on stdout) and clean errors."""
from __future__ import annotations

import json
import os

import pytest

from click.testing import CliRunner

from tans_registry.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_help_names_the_commands():
    res = run("--help")
    assert res.exit_code == 0
    assert "data" in res.output and "zoo" in res.output
    res = run("zoo", "build", "--help")
    assert "--profile" in res.output and "--resume" in res.output and "--work-dir" in res.output


def test_data_list_json_lists_the_demo_set():
    res = run("data", "list", "--json")
    assert res.exit_code == 0
    names = [d["name"] for d in json.loads(res.stdout)]
    assert {"mnist", "bccd_cells", "sign_language_digits", "pneumoniamnist"} <= set(names)


def test_data_show_describes_a_dataset():
    res = run("data", "show", "bccd_cells", "--json")
    assert res.exit_code == 0
    info = json.loads(res.stdout)
    assert info["n_classes"] == 3 and sum(info["train_class_counts"]) == info["n_train"]


def test_unknown_dataset_is_a_clean_error(tmp_path):
    res = run("zoo", "build", "--datasets", "no_such_set", "--work-dir", str(tmp_path / "w"))
    assert res.exit_code == 1
    assert "dataset 'no_such_set' not found" in res.stderr and "tans data list" in res.stderr
    assert "Traceback" not in res.output


def test_bad_flag_values_exit_2_or_1(tmp_path):
    assert run("zoo", "build", "--profile", "huge").exit_code == 2
    res = run("zoo", "build", "--subnets", "0", "--work-dir", str(tmp_path / "w"))
    assert res.exit_code == 2 and "the 'subnets' parameter of zoo build (--subnets) must be an int >= 1; got 0" in res.stderr
    res = run("query", "mnist", "--max-params", "0", "--work-dir", str(tmp_path / "w"))
    assert res.exit_code == 2 and "(--max-params) must be an int >= 1; got 0" in res.stderr
    res = run("query", "mnist", "--exclude-dataset", " ", "--work-dir", str(tmp_path / "w"))
    assert res.exit_code == 2 and "(--exclude-dataset) must be a list of non-empty names" in res.stderr
    res = run("zoo", "list", "--dataset", "", "--work-dir", str(tmp_path / "w"))
    assert res.exit_code == 2 and "'dataset' parameter of zoo list" in res.stderr and "Traceback" not in res.output
    res = run("zoo", "register", "--data-dir", "x")  # an option the command has no use for is not accepted
    assert res.exit_code == 2 and "No such option" in res.output


def test_bad_tracking_uri_is_a_clean_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    res = run("zoo", "list", "--work-dir", str(tmp_path / "w"))
    assert res.exit_code == 1
    assert "cannot use the MLflow tracking store" in res.stderr and "MLFLOW_TRACKING_URI" in res.stderr


def test_zoo_build_json_then_list(tiny_data_dir, tmp_path):
    work = str(tmp_path / "w")
    res = run("zoo", "build", "--datasets", "cells", "--subnets", "2", "--epochs", "1", "--base-epochs", "0",
              "--data-dir", str(tiny_data_dir), "--work-dir", work, "--json")
    assert res.exit_code == 0, res.stderr
    rec = json.loads(res.stdout)  # exactly one JSON document
    assert rec["n_networks"] == 2 and rec["groups"][0]["status"] == "built"
    listed = json.loads(run("zoo", "list", "--work-dir", work, "--json").stdout)
    assert [(n["group"], n["index"]) for n in listed] == [("cells", 0), ("cells", 1)]
    assert run("zoo", "list", "--work-dir", work, "--max-params", "1", "--json").stdout.strip() == "[]"


def test_each_call_uses_its_own_work_dir(tmp_path):
    """MLflow exports the tracking URI it was given; a second work dir must still get its own store."""
    from tans_registry import tracking

    for name in ("a", "b"):
        wd, uri = tracking.setup(tmp_path / name)
        assert uri == f"sqlite:///{tmp_path / name / 'mlflow.db'}"
        tracking.experiment_id("zoo", wd)
        assert (tmp_path / name / "mlflow.db").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_leaves_no_worker_behind(tiny_data_dir, tmp_path, workers):
    """`kill` during a build: no worker process is left building behind it; `--resume` rebuilds the
    interrupted groups (their runs never got the complete tag)."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    work = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, "-m", "tans_registry.cli", "zoo", "build", "--datasets", "digits,cells",
                             "--epochs", "500", "--base-epochs", "0", "--workers", str(workers), "--work-dir", str(work),
                             "--data-dir", str(tiny_data_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300  # generous: a loaded 2-core machine takes minutes to start the workers
        while time.time() < deadline:
            if (work / "mlflow.db").exists():
                try:
                    with sqlite3.connect(work / "mlflow.db") as db:
                        if db.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0] >= workers:
                            break
                except sqlite3.OperationalError:  # tables not created yet
                    pass
            assert proc.poll() is None, "the build ended before it could be interrupted"
            time.sleep(0.5)
        else:
            raise AssertionError("no run started within 300 s")
        time.sleep(1)
        children = _descendants(proc.pid)
        assert len(children) >= (workers if workers > 1 else 0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == -signal.SIGTERM
    finally:
        proc.kill()
    with sqlite3.connect(work / "mlflow.db") as db:
        assert db.execute("select count(*) from tags where key = 'tans.complete'").fetchone()[0] == 0
    time.sleep(2)
    alive = [pid for pid in children if os.path.exists(f"/proc/{pid}") and
             not open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"]
    assert not alive, f"worker processes left running: {alive}"


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(c) for t in os.listdir(f"/proc/{p}/task")
                    for c in open(f"/proc/{p}/task/{t}/children").read().split()]
        except OSError:
            continue
        out += kids
        todo += kids
    return out
