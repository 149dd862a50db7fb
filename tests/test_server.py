"""The product end to end against a real MLflow tracking server on PostgreSQL, with served artifacts.

``mlflow server`` (the command :func:`tans_registry.tracking.server_command` defines, the one the docker
compose file runs) is started on loopback over a fresh PostgreSQL database, its artifacts served from a
temporary folder. Then, with ``MLFLOW_TRACKING_URI=http://127.0.0.1:<port>``, the CLI runs the whole
pipeline on the tiny data as subprocesses: ``zoo build``, ``zoo register``, ``encoders train``, ``index
build``, ``query`` (one candidate fine-tuned, the winner exported to ONNX) and ``predict`` with the ONNX
export. Checked: the registry on the server (an ``MlflowClient`` over http, and the rows in PostgreSQL),
every artifact in the server's artifacts destination and none in a local ``./mlruns``, a zoo version
loaded with ``mlflow.pyfunc`` through ``models:/`` over http and predicting. Fails, never skips, when
PostgreSQL is down (the ``pg_database`` fixture).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tans_registry.tracking import server_command, stop_process_group

pytestmark = pytest.mark.postgres

TANS = [sys.executable, "-m", "tans_registry.cli"]
SERVER_START_TIMEOUT_S = 120  # a fresh PostgreSQL database is migrated first: ~20 s on 2 busy cores
COMMAND_TIMEOUT_S = 600
GROUPS, N_VERSIONS = 3, 9
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, whatever proxy is set


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TANS_"))}
    return env | {"PYTHONUNBUFFERED": "1", "NO_PROXY": "127.0.0.1,localhost", "MLFLOW_DISABLE_TELEMETRY": "true",
                  "DO_NOT_TRACK": "true"} | extra


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no output)"


@contextmanager
def tracking_server(backend_uri: str, artifacts: Path, cwd: Path):
    """``mlflow server`` (:func:`server_command`) on loopback over ``backend_uri``; yields its http URI and
    stops it (its whole process group) afterwards."""
    exe = Path(sys.executable).with_name("mlflow")
    cwd.mkdir(parents=True, exist_ok=True)
    # no background job runner (Huey workers, for GenAI scorers only)
    env = _env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    for attempt in range(3):  # a free port can be taken between picking and binding it: pick again
        port = _free_port()
        cmd = server_command(backend_uri, artifacts, port=port, mlflow_exe=exe, workers=1)
        err = cwd / f"server-{attempt}.err"
        with open(err, "wb") as ferr:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=ferr, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        uri = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT_S
            while proc.poll() is None:
                try:
                    with _HTTP.open(f"{uri}/health", timeout=5) as resp:
                        if resp.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"`mlflow server` did not answer {uri}/health within {SERVER_START_TIMEOUT_S} s\n"
                                f"command: {' '.join(cmd)}\noutput (tail):\n{_tail(err)}", pytrace=False)
                time.sleep(0.5)
            if proc.poll() is not None:
                if "address already in use" in _tail(err).lower() and attempt < 2:
                    continue
                pytest.fail(f"`mlflow server` exited with status {proc.returncode} before answering\n"
                            f"command: {' '.join(cmd)}\noutput (tail):\n{_tail(err)}", pytrace=False)
            yield uri
            return
        finally:
            stop_process_group(proc)


@pytest.mark.slow
def test_the_whole_pipeline_runs_against_a_tracking_server_on_postgresql_with_served_artifacts(
        pg_database, tiny_data_dir, tmp_path, monkeypatch):
    import mlflow
    import psycopg
    from PIL import Image

    artifacts = tmp_path / "served-artifacts"
    work = tmp_path / "client"  # the commands' current and work directory
    server_cwd = tmp_path / "server"
    work.mkdir()
    data = ["--data-dir", str(tiny_data_dir)]
    timings: dict[str, float] = {}
    not_json: list[str] = []  # commands whose --json stdout was more than one JSON document

    t0 = time.monotonic()
    with tracking_server(pg_database, artifacts, server_cwd) as uri:
        timings["server start"] = time.monotonic() - t0
        env = _env(MLFLOW_TRACKING_URI=uri)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # this process too (restored afterwards)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)

        def tans(*args: str) -> dict:
            t0 = time.monotonic()
            res = subprocess.run(TANS + list(args) + ["--work-dir", str(work), "--json"], cwd=work, env=env,
                                 capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
            timings[" ".join(args[:2])] = time.monotonic() - t0
            print(f"tans {' '.join(args[:2])}: {timings[' '.join(args[:2])]:.1f} s", flush=True)
            assert res.returncode == 0, f"tans {' '.join(args)} failed:\n{res.stderr[-3000:]}"
            try:
                return json.loads(res.stdout)
            except json.JSONDecodeError:  # checked at the end; go on with the document's line
                not_json.append(f"tans {' '.join(args[:2])}: {res.stdout[:300]!r}")
                return json.loads(res.stdout.strip().splitlines()[-1])

        # 3 groups (two class-subset tasks of digits, cells whole) x 3 networks
        tans("zoo", "build", "--profile", "quick", "--base-epochs", "0", "--datasets", "digits,cells", "--subnets", "3", "--epochs", "1",
             "--groups", str(GROUPS), *data)
        reg = tans("zoo", "register")
        assert reg["tracking_uri"] == uri and reg["created"] == N_VERSIONS and len(reg["models"]) == GROUPS, reg
        tans("encoders", "train", "--steps", "6", "--k-per-class", "4", "--val-datasets", "cells", *data)
        idx = tans("index", "build")
        assert idx["cache"] == "built" and idx["versions"] == N_VERSIONS and idx["models"] == GROUPS, idx
        assert idx["encoder_version"] not in ("", "raw"), idx
        q = tans("query", "cells", "--top-k", "2", "--finetune", "1", "--epochs", "1", *data)
        assert len(q["candidates"]) == 2 and q["candidates"][0]["model"].startswith("zoo."), q["candidates"]
        assert q["query"]["zoo_networks"] == N_VERSIONS and len(q["finetuned"]) == 1, q
        assert q["winner"]["model"] == "tans-finetuned.cells", q["winner"]
        onnx_uri = q["onnx"]["model_uri"]
        assert onnx_uri.startswith("models:/tans-onnx.cells"), q["onnx"]

        # the ONNX export, downloaded from the server, classifies images
        cells = np.load(tiny_data_dir / "cells.npz")
        images = cells["x_test"][:3]
        files = []
        for i, img in enumerate(images):
            Image.fromarray(img).save(work / f"img{i}.png")
            files.append(str(work / f"img{i}.png"))
        pred = tans("predict", onnx_uri, *files)
        assert len(json.dumps(pred)) > 2 and all(Path(f).name in json.dumps(pred) for f in files), pred

        # the registry lives on the server
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        names = {m.name for m in client.search_registered_models(max_results=1000)}
        assert set(reg["models"]) <= names and {"tans-encoders", "tans-finetuned.cells", "tans-onnx.cells"} <= names
        for name in reg["models"]:
            versions = client.search_model_versions(f"name = '{name}'")
            assert len(versions) == 3 and all(v.source.startswith("mlflow-artifacts:/") for v in versions), \
                [(v.version, v.source) for v in versions]
        runs = client.search_runs([client.get_experiment_by_name("tans/zoo").experiment_id])
        assert len(runs) >= GROUPS and all(r.info.artifact_uri.startswith("mlflow-artifacts:/") for r in runs)
        # ... in PostgreSQL, through the server
        with psycopg.connect(pg_database.replace("postgresql+psycopg://", "postgresql://", 1)) as con:
            n_zoo = con.execute("select count(*) from model_versions where name like 'zoo.%'").fetchone()[0]
        assert n_zoo == N_VERSIONS

        # a zoo version loads through models:/ over http and predicts
        model = mlflow.pyfunc.load_model("models:/zoo.cells/1")
        probs = np.asarray(model.predict(images)["probabilities"])
        n_classes = len(cells["classes"])
        assert probs.shape == (3, n_classes) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-3), probs

    # every artifact went through the server into its artifacts destination; none was written locally
    stored = [p for p in artifacts.rglob("*") if p.is_file()]
    names = {p.name for p in stored}
    assert {"supernet.safetensors", "zoo.json", "MLmodel", "_complete"} <= names, sorted(names)
    assert any(p.suffix == ".onnx" for p in stored), sorted(names)
    assert any(p.parent.name == "n0" and p.name == "MLmodel" for p in stored)
    for folder in (work, server_cwd, tmp_path):
        for local in ("mlruns", "mlartifacts", "mlflow.db"):
            assert not (folder / local).exists(), f"{folder / local} exists: artifacts or runs were kept locally"
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
    # `--json` prints exactly one JSON document on stdout (README), also behind a tracking server, where
    # MLflow itself prints "View run ... at: http://..." when a run ends unless told not to
    # (MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT)
    assert not not_json, "stdout of --json is not one JSON document:\n" + "\n".join(not_json)
