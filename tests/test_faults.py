"""Faults and bad input: a killed writer, an unreachable store, concurrent writers, malformed data. Every
check runs the real thing (subprocesses killed with SIGKILL, the real PostgreSQL server, real archives)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import clone_work_dir, tiny_work


TANS = [sys.executable, "-m", "tans_registry.cli"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TANS_"))}
    return env | {"PYTHONUNBUFFERED": "1"} | extra


def registry_dump(work: Path) -> dict:
    """Names, versions (number, tags, source relative to the work dir, status), model tags and aliases."""
    import mlflow

    from tans_registry import tracking

    tracking.setup(str(work))
    c = mlflow.MlflowClient()
    out = {}
    for m in c.search_registered_models(max_results=1000):
        versions = {}
        for v in c.search_model_versions(f"name = '{m.name}'", max_results=1000):
            src = v.source.replace(work.as_uri(), "<wd>").replace(str(work), "<wd>")
            tags = dict(v.tags)
            # the digest of the version's files: present, but the files name their own work dir and runs
            assert len(tags.get("tans.sha256", "")) == 64, (m.name, v.version, tags)
            tags["tans.sha256"] = "<sha256>"
            versions[int(v.version)] = {"tags": tags, "source": src, "status": v.status}
            local = Path(v.source.replace("file://", ""))
            assert (local / "MLmodel").is_file(), f"{m.name} v{v.version} points at missing files: {v.source}"
        tags = dict(m.tags)
        for k in [k for k in tags if k.startswith("tans.alias_log.")]:  # each move's time: of its own run
            tags[k] = [{f: e[f] for f in ("version", "from", "by")} for e in json.loads(tags[k])]
        out[m.name] = {"tags": tags, "aliases": dict(m.aliases), "versions": versions}
    return out


def _count_versions(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from model_versions").fetchone()[0]
    except sqlite3.Error:
        return 0


def _kill_when(cmd: list[str], ready, timeout: float = 240.0) -> int:
    """Run ``cmd``; SIGKILL it as soon as ``ready()`` holds. Returns the exit status (-9 when killed)."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < timeout:
        if ready():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    return proc.returncode


@pytest.fixture(scope="module")
def built_zoo(tmp_path_factory, tiny_templates):
    """A tiny real zoo (4 groups x 3 networks), not registered: a copy of the session's."""
    return tiny_work(tiny_templates, "built", tmp_path_factory.mktemp("faults") / "zoo")


@pytest.mark.slow
def test_kill_9_during_zoo_register_then_rerun_equals_an_uninterrupted_run(built_zoo, tmp_path):
    straight = clone_work_dir(built_zoo, tmp_path / "straight")
    killed = clone_work_dir(built_zoo, tmp_path / "killed")
    assert subprocess.run(TANS + ["zoo", "register", "--work-dir", str(straight)], env=_env(),
                          capture_output=True, timeout=300).returncode == 0
    db = killed / "mlflow.db"
    rc = _kill_when(TANS + ["zoo", "register", "--work-dir", str(killed)], lambda: _count_versions(db) >= 4)
    assert rc == -signal.SIGKILL, "the registration ended before it could be killed"
    assert 4 <= _count_versions(db) < 12                                  # killed half-way
    rerun = subprocess.run(TANS + ["zoo", "register", "--work-dir", str(killed)], env=_env(), capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert registry_dump(killed) == registry_dump(straight)


def test_a_half_uploaded_set_of_model_folders_is_uploaded_again(built_zoo, tmp_path):
    """Registration logs each network's MLmodel folder into its group run, then a marker: without the
    marker (an upload cut short), the next registration uploads them again. (In subprocesses: the clone
    shares its run ids with the fixture's build, whose artifact locations this process has cached.)"""
    import mlflow

    from tans_registry import tracking
    from tans_registry.registry.register import DIRS_COMPLETE, REGISTRY_DIR

    work = clone_work_dir(built_zoo, tmp_path / "w")

    def register() -> str:
        res = subprocess.run(TANS + ["zoo", "register", "--work-dir", str(work), "--json"], env=_env(),
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        return res.stdout

    register()
    tracking.setup(str(work))
    run = mlflow.search_runs(experiment_names=["tans/zoo"], filter_string="tags.`tans.group` = 'cells'",
                             output_format="list")[0]
    folder = work / "mlruns" / "tans-zoo" / run.info.run_id / "artifacts" / REGISTRY_DIR
    (folder / DIRS_COMPLETE).unlink()
    shutil.rmtree(folder / "n1")                              # as if the upload had stopped half-way
    mlflow.MlflowClient().delete_registered_model_tag("zoo.cells", "tans.registered_run")  # the group is revisited
    assert json.loads(register())["created"] == 0
    assert (folder / "n1" / "MLmodel").is_file() and (folder / DIRS_COMPLETE).is_file()
    registry_dump(work)  # every version points at a complete MLmodel folder


def _build_into(uri: str, data_dir: Path, work: Path) -> None:
    """A tiny zoo (3 groups x 3 networks) built in this process into the store at ``uri``."""
    from tans_registry import ZooConfig, build_zoo

    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        build_zoo(ZooConfig(profile="quick", base_epochs=0, datasets=("digits", "cells"), subnets=3, epochs=1, groups=3,
                            data_dir=str(data_dir), work_dir=str(work), progress=False))
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.mark.slow
@pytest.mark.postgres
def test_four_writers_registering_the_same_zoo_at_once_register_each_network_once(tiny_data_dir, tmp_path,
                                                                                   pg_database):
    """Four `tans zoo register` processes started together on one PostgreSQL-backed store."""
    import mlflow

    env = _env(MLFLOW_TRACKING_URI=pg_database)
    _build_into(pg_database, tiny_data_dir, tmp_path)
    procs = [subprocess.Popen(TANS + ["zoo", "register", "--work-dir", str(tmp_path)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    client = mlflow.MlflowClient(tracking_uri=pg_database, registry_uri=pg_database)
    models = [m for m in client.search_registered_models() if m.name.startswith("zoo.")]
    assert len(models) == 3
    for m in models:
        ids = [v.tags["tans.network_id"] for v in client.search_model_versions(f"name = '{m.name}'")]
        assert len(ids) == len(set(ids)) == 3, (m.name, sorted(ids))


def test_an_unreachable_tracking_server_is_a_clear_error_within_seconds(tmp_path):
    """No server on the port: one line naming the URI, its password masked, in seconds (MLflow alone retries
    for about 4 minutes)."""
    uri = f"http://alice:s3cret@127.0.0.1:{_free_port()}"
    t0 = time.time()
    res = subprocess.run(TANS + ["zoo", "list"], env=_env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    took = time.time() - t0
    assert res.returncode == 1 and took < 30, (took, res.stderr)
    assert "cannot reach the MLflow tracking server http://alice:***@127.0.0.1" in res.stderr
    assert "s3cret" not in res.stderr + res.stdout and "Traceback" not in res.stderr


def test_an_unreachable_database_is_a_clear_error_within_seconds(tmp_path):
    uri = f"postgresql+psycopg://bob:hunter2@127.0.0.1:{_free_port()}/nowhere"
    t0 = time.time()
    res = subprocess.run(TANS + ["zoo", "list"], env=_env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 1 and time.time() - t0 < 30, res.stderr
    assert "postgresql+psycopg://bob:***@127.0.0.1" in res.stderr and "hunter2" not in res.stderr


# ----------------------------------------------------------------------------- bad data

def _archive(path: Path, x_train, y_train, x_test, y_test, classes) -> Path:
    np.savez(path, x_train=np.asarray(x_train, np.uint8), y_train=np.asarray(y_train, np.int64),
             x_test=np.asarray(x_test, np.uint8), y_test=np.asarray(y_test, np.int64), classes=np.array(classes))
    return path


@pytest.mark.parametrize("case, message", [
    ("one_training_image", "has 1 training image; training needs at least 2"),
    ("class_without_training_image", "1 class(es) have no training image ('c')"),
])
def test_archives_too_small_to_train_on_are_refused(tmp_path, case, message):
    from tans_registry.cli import main

    img = np.zeros((1, 8, 8, 3), np.uint8)
    if case == "one_training_image":
        path = _archive(tmp_path / "a.npz", img, [0], np.repeat(img, 2, 0), [0, 1], ["a", "b"])
    else:
        path = _archive(tmp_path / "a.npz", np.repeat(img, 4, 0), [0, 0, 1, 1], np.repeat(img, 3, 0), [0, 1, 2],
                        ["a", "b", "c"])
    res = CliRunner().invoke(main, ["data", "show", str(path)])
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output, res.output


def test_supernet_training_ends_on_a_single_image():
    """A batch of one cannot train batch norm; the step still counts, so the loop ends."""
    from tans_registry.zoo.profiles import TrainConfig
    from tans_registry.zoo.space import SupernetSpec, build_supernet
    from tans_registry.zoo.tensors import DEFAULT_MEAN, DEFAULT_STD
    from tans_registry.zoo.train import train_supernet

    spec = SupernetSpec(n_classes=2)
    out = train_supernet(build_supernet(spec), spec, np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1, np.int64),
                         TrainConfig(epochs=3.0, eval_images=0), DEFAULT_MEAN, DEFAULT_STD)
    assert out["steps"] == 3 and out["epochs"] == 3


# ----------------------------------------------------------------------------- security

ROOT = Path(__file__).resolve().parents[1]
PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}
PICKLING_FLAVOURS = {"mlflow.pytorch", "mlflow.sklearn", "mlflow.pyfunc.PythonModel"}


def pickle_findings(source: str, where: str) -> list[str]:
    """What in ``source`` could unpickle: imports of pickling modules, ``torch.load`` without
    ``weights_only=True``, ``np.load`` without ``allow_pickle=False``, pickling MLflow flavours,
    ``pandas.read_pickle``."""
    import ast

    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                                                     else [])
            for n in names:
                if n.split(".")[0] in PICKLING_MODULES or any(n.startswith(f) for f in PICKLING_FLAVOURS):
                    out.append(f"{where}:{node.lineno} imports {n}")
        elif isinstance(node, ast.Attribute):
            dotted = ast.unparse(node)
            if any(dotted.startswith(f) for f in PICKLING_FLAVOURS) or dotted.endswith("read_pickle"):
                out.append(f"{where}:{node.lineno} uses {dotted}")
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if name == "torch.load" and kw.get("weights_only") != "True":
                out.append(f"{where}:{node.lineno} torch.load without weights_only=True")
            if name in ("np.load", "numpy.load") and kw.get("allow_pickle") != "False":
                out.append(f"{where}:{node.lineno} {name} without allow_pickle=False")
    return out


def test_nothing_from_the_registry_or_from_users_is_unpickled():
    bad = ("import pickle\nfrom joblib import load\nimport torch, numpy as np\ntorch.load('x')\n"
           "np.load('y.npz')\nimport mlflow.pytorch\nmlflow.pytorch.load_model('m')\nimport pandas as pd\n"
           "pd.read_pickle('z')\n")
    assert len(pickle_findings(bad, "bad.py")) >= 7                      # the scanner sees what it looks for
    assert not pickle_findings("import numpy as np\nnp.load('a', allow_pickle=False)\n", "ok.py")
    files = sorted(ROOT.glob("tans_registry/**/*.py")) + sorted(ROOT.glob("scripts/*.py"))
    assert len(files) > 50
    findings = [f for p in files for f in pickle_findings(p.read_text(), str(p.relative_to(ROOT)))]
    assert not findings, findings
    loads = sum(p.read_text().count("allow_pickle=False") for p in files)
    assert loads >= 4                                                    # archives, snapshots, index, query sets


@pytest.mark.slow
@pytest.mark.postgres
def test_a_password_in_the_store_uri_never_reaches_output_tags_params_or_artifacts(tiny_data_dir, tmp_path,
                                                                                     pg_database):
    """Trust auth ignores the password, so the commands run; the secret must appear nowhere they write."""
    import mlflow

    secret = "Pw-s3cret-7781"
    uri = pg_database.replace("://root@", f"://root:{secret}@")
    assert secret in uri
    env = _env(MLFLOW_TRACKING_URI=uri)
    outputs = []
    for args in (["zoo", "build", "--profile", "quick", "--base-epochs", "0", "--datasets", "cells", "--subnets", "2", "--epochs", "1",
                  "--data-dir", str(tiny_data_dir), "--work-dir", str(tmp_path), "--json"],
                 ["zoo", "register", "--work-dir", str(tmp_path), "--json"],
                 ["-v", "zoo", "list", "--work-dir", str(tmp_path), "--json"]):
        res = subprocess.run(TANS + args, env=env, capture_output=True, text=True, timeout=600)
        outputs.append(res.stdout + res.stderr)
    assert "root:***@" in outputs[0] + outputs[1]                        # the URI is shown, masked
    assert all(secret not in o for o in outputs)
    client = mlflow.MlflowClient(tracking_uri=pg_database, registry_uri=pg_database)
    stored = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            stored += [str(run.data.params), str(run.data.tags), run.info.artifact_uri]
    for m in client.search_registered_models():
        stored += [str(m.tags), m.description or ""]
        stored += [str(v.tags) + (v.description or "") + v.source for v in client.search_model_versions(f"name='{m.name}'")]
    assert stored and all(secret not in s for s in stored)
    texts = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size < 5_000_000]
    assert texts and all(secret.encode() not in t for t in texts)


# ----------------------------------------------------------------------------- kill -9 after the zoo

def masked(dump: dict) -> dict:
    """A registry dump with run ids (32 hex digits) masked: two clones of one store give their new runs new ids."""
    import re

    return json.loads(re.sub(r"\b[0-9a-f]{32}\b", "<run>", json.dumps(dump, sort_keys=True)))


def _count_rows(db: Path, sql: str) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute(sql).fetchone()[0]
    except sqlite3.Error:
        return 0


def _killpg_when(cmd: list[str], ready, timeout: float = 600.0) -> int:
    """As :func:`_kill_when`, but SIGKILL the command's whole process group (its worker processes too)."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < timeout:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    return proc.returncode


def _ok(cmd: list[str]) -> str:
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.fixture(scope="module")
def trained_work(tmp_path_factory, tiny_templates):
    """The tiny pipeline up to trained, registered encoders (no index yet): a copy of the session's."""
    return tiny_work(tiny_templates, "trained", tmp_path_factory.mktemp("faults-trained") / "work")


@pytest.fixture(scope="module")
def indexed_work(tmp_path_factory, tiny_templates):
    """The tiny pipeline with its index built (latencies measured once, in its cache): a copy of the session's."""
    return tiny_work(tiny_templates, "indexed", tmp_path_factory.mktemp("faults-indexed") / "work")


@pytest.mark.slow
def test_kill_9_during_index_build_fine_tuning_and_export_then_rerun_equals_uninterrupted_runs(
        trained_work, tiny_data_dir, tmp_path):
    """Each stage killed (its whole process group, SIGKILL) half-way, then run again, leaves the registry a
    straight run leaves: same names, versions, tags and aliases (run ids masked), every version complete."""
    data = ["--data-dir", str(tiny_data_dir)]
    straight = clone_work_dir(trained_work, tmp_path / "straight")
    killed = clone_work_dir(trained_work, tmp_path / "killed")
    db = killed / "mlflow.db"

    # index build: killed once some zoo versions carry the encoders' embeddings
    _ok(TANS + ["index", "build", "--work-dir", str(straight)])
    embedded = "select count(*) from model_version_tags where key = 'tans.encoder_version'"
    assert _killpg_when(TANS + ["index", "build", "--work-dir", str(killed)],
                        lambda: _count_rows(db, embedded) >= 2) == -signal.SIGKILL
    assert not list((killed / "tans-cache").glob("zoo-index-*.npz"))  # killed before its index was cached
    _ok(TANS + ["index", "build", "--work-dir", str(killed)])
    assert masked(registry_dump(killed)) == masked(registry_dump(straight))

    # a query's fine-tuning: killed while its candidates train (the query run exists, no fine-tuned model yet)
    query = ["query", "cells", "--finetune", "2", "--epochs", "1", "--top-k", "2", *data]
    _ok(TANS + query + ["--work-dir", str(straight)])
    started = "select count(*) from runs where name like 'query-%'"
    assert _killpg_when(TANS + query + ["--work-dir", str(killed)],
                        lambda: _count_rows(db, started) >= 1) == -signal.SIGKILL
    assert _count_rows(db, "select count(*) from registered_models where name like 'tans-finetuned.%'") == 0
    _ok(TANS + query + ["--work-dir", str(killed)])
    assert masked(registry_dump(killed)) == masked(registry_dump(straight))

    # an export: killed half-way (after 8 s of work, before it has registered), then run again. An export takes
    # less than 8 s on a fast machine: killed after it had registered, it would have finished, and the rerun
    # would rightly add a second version (CI saw it). So another writer holds the store's write lock meanwhile
    # (readers go on): the export converts and checks its graph, then waits for the lock at its first write
    # (MLflow's busy timeout is 20 s) or is still converting when it is killed; either way it wrote nothing.
    export = ["export", "models:/tans-finetuned.cells/1", "--no-promote", *data]
    _ok(TANS + export + ["--work-dir", str(straight)])
    before = registry_dump(killed)
    writer = sqlite3.connect(db, timeout=30)
    try:
        writer.execute("BEGIN IMMEDIATE")
        t0 = time.time()
        rc = _killpg_when(TANS + export + ["--work-dir", str(killed)], lambda: time.time() - t0 > 8)
    finally:
        writer.rollback()
        writer.close()
    assert rc == -signal.SIGKILL
    assert registry_dump(killed) == before and _count_rows(db, "select count(*) from runs where name like 'export-%'") == 0
    _ok(TANS + export + ["--work-dir", str(killed)])
    assert masked(registry_dump(killed)) == masked(registry_dump(straight))


@pytest.fixture
def private_postgres():
    """A PostgreSQL cluster of this test's own (Debian's pg_createcluster, trust auth, a free port), so that
    restarting it disturbs no other test; dropped afterwards. Yields (URI, cluster version, cluster name)."""
    import uuid

    version = sorted(os.listdir("/etc/postgresql"))[0]
    name, port = f"tans{uuid.uuid4().hex[:8]}", _free_port()
    subprocess.run(["pg_createcluster", version, name, "-p", str(port), "--", "--auth=trust"], check=True,
                   capture_output=True, timeout=120)
    try:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"], check=True, timeout=120)
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-qc",
                        "create role root superuser login", "-c", "create database tans owner root"],
                       check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg://root@127.0.0.1:{port}/tans", version, name
    finally:
        subprocess.run(["pg_dropcluster", "--stop", version, name], capture_output=True, timeout=120)


@pytest.mark.slow
@pytest.mark.postgres
def test_postgresql_restarted_during_registration_then_rerun_registers_everything_once(tiny_data_dir, tmp_path,
                                                                                       private_postgres):
    """The server restarts (every connection dropped) while `tans zoo register` writes: the command either
    finishes (a group whose connection drops is retried) or stops with one clear line; a rerun completes
    it, each network once."""
    pg_database, version, cluster = private_postgres
    import mlflow
    import psycopg

    env = _env(MLFLOW_TRACKING_URI=pg_database)
    _ok_env = dict(env=env, capture_output=True, text=True, timeout=600)
    _build_into(pg_database, tiny_data_dir, tmp_path)
    plain = pg_database.replace("postgresql+psycopg://", "postgresql://")

    def versions() -> int:
        try:
            with psycopg.connect(plain, connect_timeout=2) as con:
                return con.execute("select count(*) from model_versions").fetchone()[0]
        except psycopg.Error:
            return 0

    proc = subprocess.Popen(TANS + ["zoo", "register", "--work-dir", str(tmp_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while versions() < 2 and proc.poll() is None and time.time() - t0 < 300:
        time.sleep(0.05)
    assert proc.poll() is None, "the registration ended before the restart"
    port = pg_database.split(":")[-1].split("/")[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "restart"], check=True, timeout=120)
    for _ in range(60):
        if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", port, "-q"]).returncode == 0:
            break
        time.sleep(1)
    err = proc.communicate(timeout=600)[1]
    if proc.returncode != 0:  # failed cleanly: one line naming the store and the next step
        assert proc.returncode == 1 and "Traceback" not in err, err[-2000:]
        assert "tans zoo register" in err and "postgresql+psycopg://" in err, err[-2000:]
    rerun = subprocess.run(TANS + ["zoo", "register", "--work-dir", str(tmp_path)], **_ok_env)
    assert rerun.returncode == 0, rerun.stderr
    client = mlflow.MlflowClient(tracking_uri=pg_database, registry_uri=pg_database)
    models = [m for m in client.search_registered_models() if m.name.startswith("zoo.")]
    assert len(models) == 3
    for m in models:
        vs = client.search_model_versions(f"name = '{m.name}'")
        ids = [v.tags["tans.network_id"] for v in vs]
        assert len(ids) == len(set(ids)) == 3, (m.name, sorted(ids))
        assert all((Path(v.source.replace("file://", "")) / "MLmodel").is_file() for v in vs)


@pytest.mark.slow
def test_queries_answer_while_new_networks_await_embedding_and_a_garbled_version_is_skipped(
        indexed_work, tiny_data_dir, tmp_path):
    """Queries answer while `tans zoo register` writes a new group; afterwards its networks, not embedded
    yet, are left out of the search with a warning (not the query); a version whose embedding tag is
    garbled is skipped, the rest served."""
    import mlflow

    from tans_registry import tracking

    data = ["--data-dir", str(tiny_data_dir)]
    work = clone_work_dir(indexed_work, tmp_path / "w")
    extra = tmp_path / "data"
    extra.mkdir()
    for f in tiny_data_dir.glob("*.npz"):
        shutil.copy(f, extra / f.name)
    shutil.copy(tiny_data_dir / "cells.npz", extra / "blood.npz")
    _ok(TANS + ["zoo", "build", "--profile", "quick", "--base-epochs", "0", "--datasets", "blood", "--subnets", "8", "--epochs", "1",
                "--data-dir", str(extra), "--work-dir", str(work)])
    query = TANS + ["query", "digits", "--finetune", "0", "--top-k", "20", "--work-dir", str(work), "--json", *data]
    register = subprocess.Popen(TANS + ["zoo", "register", "--work-dir", str(work)], env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    db = work / "mlflow.db"
    while _count_rows(db, "select count(*) from model_versions") <= 12 and register.poll() is None:
        time.sleep(0.05)
    during = [subprocess.run(query, env=_env(), capture_output=True, text=True, timeout=600) for _ in range(2)]
    assert register.wait(timeout=600) == 0, register.stderr.read()[-2000:]
    for res in during:  # the registration was writing: the queries answered all the same
        assert res.returncode == 0 and json.loads(res.stdout)["candidates"], res.stderr[-2000:]
    res = subprocess.run(query, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "8 of 20 zoo versions are not embedded by the champion encoders" in res.stderr
    assert {c["group"] for c in json.loads(res.stdout)["candidates"]} == {"digits-t0", "digits-t1", "digits-t2",
                                                                         "cells"}
    tracking.setup(str(work))
    mlflow.MlflowClient().set_model_version_tag("zoo.cells", "1", "tans.model_embedding", "f16:not-base64!")
    rebuilt = subprocess.run(TANS + ["index", "build", "--force", "--work-dir", str(work)], env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "1 zoo version(s) left out of the index, their tags unreadable: zoo.cells v1" in rebuilt.stderr
    res = subprocess.run(query, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    picked = {(c["model"], c["version"]) for c in json.loads(res.stdout)["candidates"]}
    assert ("zoo.cells", 1) not in picked and ("zoo.blood", 1) in picked and len(picked) == 19


def test_two_commands_creating_an_experiment_at_once_both_use_the_one_created(tmp_path, monkeypatch):
    """Two commands started at once on a store without ``tans/queries``: both read "no such experiment",
    the second one's create fails on the name (CI saw the second of two parallel queries exit with a
    TRACKING error); it must use the experiment the first one created. Likewise for a deleted experiment
    both restore. The other command's create (restore) is put between this one's read and its own, on the
    real SQLite store."""
    from mlflow import MlflowClient

    from tans_registry import tracking

    wd, _ = tracking.setup(tmp_path / "w")
    read = MlflowClient.get_experiment_by_name
    created = []

    def read_then_the_other_creates(self, name):
        exp = read(self, name)
        if not created:
            created.append(MlflowClient().create_experiment(name))
        return exp

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", read_then_the_other_creates)
    assert tracking.experiment_id("queries", wd) == created[0]
    monkeypatch.undo()
    assert [e.name for e in MlflowClient().search_experiments() if e.name.startswith("tans/")] == ["tans/queries"]

    # the same with a deleted experiment: the other command restores it first
    MlflowClient().delete_experiment(created[0])

    def read_then_the_other_restores(self, name):
        exp = read(self, name)
        if len(created) == 1:
            MlflowClient().restore_experiment(created[0])
            created.append("restored")
        return exp

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", read_then_the_other_restores)
    assert tracking.experiment_id("queries", wd) == created[0]
    monkeypatch.undo()
    assert MlflowClient().get_experiment(created[0]).lifecycle_stage == "active"


@pytest.mark.slow
def test_two_fine_tuning_queries_at_once_both_land_and_the_champion_is_the_better(indexed_work, tiny_data_dir,
                                                                                  tmp_path):
    import mlflow

    from tans_registry import tracking

    work = clone_work_dir(indexed_work, tmp_path / "w")
    runs = [subprocess.Popen(TANS + ["query", "cells", "--finetune", "1", "--top-k", "2", "--epochs", str(epochs),
                                     "--work-dir", str(work), "--data-dir", str(tiny_data_dir)],
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for epochs in (1, 3)]
    errors = [p.communicate(timeout=900)[1] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], [e[-2000:] for e in errors]
    tracking.setup(str(work))
    c = mlflow.MlflowClient()
    versions = c.search_model_versions("name = 'tans-finetuned.cells'")
    assert len(versions) == 2
    best = max(versions, key=lambda v: (float(v.tags["tans.val_accuracy"]), -int(v.version)))
    assert c.get_model_version_by_alias("tans-finetuned.cells", "champion").version == best.version
    onnx = c.get_model_version_by_alias("tans-onnx.cells", "champion")
    assert onnx.tags["tans.parent_model"] == f"models:/tans-finetuned.cells/{best.version}"
    assert len(c.search_model_versions("name = 'tans-onnx.cells'")) == 2


@pytest.mark.slow
def test_a_candidate_whose_artifacts_are_missing_is_skipped_and_the_query_goes_on(indexed_work, tiny_data_dir,
                                                                                  tmp_path):
    import mlflow

    from tans_registry import tracking

    data = ["--data-dir", str(tiny_data_dir)]
    work = clone_work_dir(indexed_work, tmp_path / "w")
    ranked = json.loads(_ok(TANS + ["query", "cells", "--finetune", "0", "--top-k", "2", "--json", "--work-dir",
                                    str(work), *data]))["candidates"]
    first = ranked[0]
    tracking.setup(str(work))
    source = mlflow.MlflowClient().get_model_version(first["model"], str(first["version"])).source
    shutil.rmtree(source.replace("file://", ""))                       # its model folder is gone
    res = subprocess.run(TANS + ["query", "cells", "--finetune", "2", "--top-k", "2", "--epochs", "1", "--json",
                                 "--work-dir", str(work), *data], env=_env(), capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"candidate {first['model_uri']} skipped" in res.stderr
    out = json.loads(res.stdout)
    assert [f["rank"] for f in out["finetuned"]] == [2] and out["winner"]["rank"] == 2


def test_a_store_error_while_reading_a_champion_is_an_error_not_no_champion(tmp_path):
    import mlflow

    from tans_registry.errors import RegistryError
    from tans_registry.registry.models import champion

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    mlflow.set_tracking_uri(f"sqlite:///{junk}")
    mlflow.set_registry_uri(f"sqlite:///{junk}")
    with pytest.raises(RegistryError, match="cannot read a model alias in the model registry at sqlite:///.*file is not a database"):
        champion("tans-encoders")


@pytest.mark.slow
def test_names_with_quotes_spaces_and_non_ascii_and_huge_or_tiny_images_go_through_a_whole_query(
        indexed_work, tiny_data_dir, tmp_path):
    """An image folder named `mes données "v2" l'été` with classes `chat 'noir'`, `café crème` and `日本`,
    images of 640x480 and 3x3 pixels among 32x32 ones: loaded (resized), ranked, fine-tuned, registered
    under a safe model name, exported."""
    import mlflow
    from PIL import Image

    from tans_registry import tracking
    from tans_registry.registry.names import finetuned_model_name

    folder = tmp_path / "mes données \"v2\" l'été"
    rng = np.random.default_rng(0)
    for c, cls in enumerate(["chat 'noir'", "café crème", "日本"]):
        (folder / cls).mkdir(parents=True)
        for i in range(30):  # 90 images: the export's parity check needs 64 training images
            size = (640, 480) if i == 0 else (3, 3) if i == 1 else (32, 32)
            base = np.full((size[1], size[0], 3), 60 * c + 40, np.uint8)
            noisy = np.clip(base + rng.integers(0, 30, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / cls / f"img {i} ü.png")
    work = clone_work_dir(indexed_work, tmp_path / "w")
    out = json.loads(_ok(TANS + ["query", str(folder), "--finetune", "1", "--top-k", "1", "--epochs", "1", "--json",
                                 "--work-dir", str(work), "--data-dir", str(tiny_data_dir)]))
    assert out["query"]["dataset"]["classes"] == 3 and out["query"]["dataset"]["train_images"] > 0
    name = finetuned_model_name(folder.name)
    assert out["winner"]["model"] == name and out["onnx"]["model_uri"].startswith("models:/tans-onnx.")
    tracking.setup(str(work))
    c = mlflow.MlflowClient()
    assert c.get_model_version_by_alias(name, "champion").tags["tans.dataset"] == folder.name
    network = json.loads(Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1") + "/data/network/network.json")
                         .read_text())
    assert sorted(network["classes"]) == sorted(["chat 'noir'", "café crème", "日本"])


@pytest.mark.slow
def test_a_real_tracking_server_that_stops_is_a_clear_error_within_seconds(tiny_data_dir, tmp_path):
    """`mlflow server` (SQLite, served artifacts) on loopback: the zoo builds and lists through it; once the
    server is stopped, the next command fails in seconds with one line naming it."""
    import urllib.request

    from tans_registry.tracking import server_command

    port = _free_port()
    exe = Path(sys.executable).parent / "mlflow"
    cmd = server_command(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts", port=port, mlflow_exe=exe,
                         workers=1)
    server = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        env = _env(MLFLOW_TRACKING_URI=uri)
        build = subprocess.run(TANS + ["zoo", "build", "--profile", "quick", "--base-epochs", "0", "--datasets", "cells", "--subnets", "2",
                                       "--epochs", "1", "--data-dir", str(tiny_data_dir), "--work-dir",
                                       str(tmp_path / "w")], env=env, capture_output=True, text=True, timeout=600)
        assert build.returncode == 0, build.stderr[-2000:]
        listed = subprocess.run(TANS + ["zoo", "list", "--json"], env=env, capture_output=True, text=True, timeout=300)
        assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 2, listed.stderr[-2000:]
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=60)
    t0 = time.time()
    gone = subprocess.run(TANS + ["zoo", "list"], env=env, capture_output=True, text=True, timeout=300)
    assert gone.returncode == 1 and time.time() - t0 < 30, gone.stderr[-2000:]
    assert f"cannot reach the MLflow tracking server {uri}" in gone.stderr and "Traceback" not in gone.stderr
