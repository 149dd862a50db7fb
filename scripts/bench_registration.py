"""Registration throughput of `tans zoo register` through a real MLflow tracking server on PostgreSQL.

    nice -n 10 .venv/bin/python scripts/bench_registration.py                  # builds a tiny zoo first
    .venv/bin/python scripts/bench_registration.py --work-dir /tmp/quick       # an embedded store with a built zoo
    .venv/bin/python scripts/bench_registration.py --synthetic-groups 20       # 20 x 50 synthetic networks
    .venv/bin/python scripts/bench_registration.py --writers 1,2,4 --json

The zoo: the complete group runs of an embedded work directory (``--work-dir``; ``<dir>/mlflow.db`` and
``<dir>/mlruns``, as `tans zoo build --work-dir` leaves them). Without one, a tiny real zoo is built into
a temporary work directory first, with `tans zoo build` on small cuts of the demo data (``--groups``,
``--subnets``, ``--epochs``). With ``--synthetic-groups N``, no zoo is trained: N synthetic group runs of
50 networks each are written as ``scripts/bench_registry.py`` writes them (tables and embeddings only).

For each writer count (``--writers``, default ``1,4``), on its own fresh PostgreSQL database
(``tans_bench_<hex>`` on ``--pg-admin``'s server, created and dropped) behind its own ``mlflow server``
(``tans_registry.tracking.server_command``: loopback, a free port, served artifacts in a temporary folder):
1. setup, not timed: the zoo's group runs are copied into the server (tags, params, artifacts uploaded
   through it; any registry/ folder left out), so every trial registers the same unregistered zoo;
2. timed: W ``tans zoo register --json`` processes started at once (W > 1 race on the same zoo, which
   register.py supports: each network ends registered exactly once, checked here); wall time from the first
   start to the last exit, process start-up and imports included, as a user sees it;
3. timed: one more ``tans zoo register`` (idempotent: nothing to create), the fixed cost of a run.
A Markdown table goes to stdout (``--json``: one JSON document); logs to stderr. Offline.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tans_registry import tracking  # noqa: E402
from tans_registry.tracking import server_command  # noqa: E402

log = logging.getLogger("bench_registration")
PG_ADMIN = os.environ.get("TANS_TEST_PG", "postgresql://root@127.0.0.1:5432/postgres")
TANS = [sys.executable, "-m", "tans_registry.cli"]
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TANS_"))}
    return env | {"PYTHONUNBUFFERED": "1", "NO_PROXY": "127.0.0.1,localhost", "MLFLOW_DISABLE_TELEMETRY": "true",
                  "DO_NOT_TRACK": "true"} | extra


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ store and server
@contextmanager
def fresh_database(admin: str):
    """A new PostgreSQL database; yields its SQLAlchemy URI; dropped afterwards, even on failure."""
    import psycopg

    name = f"tans_bench_{uuid.uuid4().hex[:10]}"
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise SystemExit(f"PostgreSQL is not reachable at {tracking.redact(admin)} ({exc}); start it or pass "
                         "--pg-admin") from None
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def tracking_server(backend_uri: str, folder: Path, workers: int):
    """``mlflow server`` (:func:`server_command`) on loopback; yields its http URI; stopped afterwards."""
    exe = Path(sys.executable).with_name("mlflow")
    port = _free_port()
    cmd = server_command(backend_uri, folder / "artifacts", port=port, mlflow_exe=exe, workers=workers)
    out = folder / "server.log"
    with open(out, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=folder, env=_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"), stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None or time.monotonic() - t0 > 180:
                raise SystemExit(f"`{' '.join(cmd)}` did not come up:\n{out.read_text(errors='replace')[-3000:]}")
            try:
                with _HTTP.open(f"{uri}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        log.info("mlflow server up on %s in %.1f s (%s)", uri, time.monotonic() - t0, tracking.redact(backend_uri))
        yield uri
    finally:
        tracking.stop_process_group(proc)


def _point_at(uri: str) -> None:
    import mlflow

    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    mlflow.set_registry_uri(None)


# ------------------------------------------------------------------------------------------- the zoo
def tiny_data(out: Path, max_train: int, max_test: int) -> Path:
    """Small cuts of two demo datasets ('digits' from mnist, 'cells' from bccd_cells), as the tests make."""
    import numpy as np

    from tans_registry.data import load_dataset

    out.mkdir(parents=True, exist_ok=True)
    for name, source in (("digits", "mnist"), ("cells", "bccd_cells")):
        ds = load_dataset(source, max_train=max_train, max_test=max_test)
        np.savez_compressed(out / f"{name}.npz", x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test,
                            y_test=ds.y_test, classes=np.array(ds.classes), source=np.array(ds.source),
                            license=np.array("see tans_registry/demo_data/README.md"), meta=np.array("{}"))
    return out


def source_runs(work_dir: Path) -> list:
    """The complete zoo group runs of an embedded work directory (latest build of each group)."""
    import mlflow

    uri = f"sqlite:///{work_dir / tracking.STORE_FILE}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(tracking.EXPERIMENTS["zoo"])
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`tans.complete` = 'true' and "
                              "tags.`tans.kind` = 'zoo'", order_by=["attributes.start_time DESC"], max_results=5000)
    latest: dict[str, object] = {}
    for r in runs:
        latest.setdefault(r.data.tags.get("tans.group"), r)
    return [r for g, r in sorted(latest.items()) if g != "__base__"]


def build_tiny_zoo(work_dir: Path, args) -> None:
    data = tiny_data(work_dir / "tiny-data", args.max_train, args.max_test)
    cmd = TANS + ["zoo", "build", "--profile", "quick", "--datasets", "digits,cells", "--groups", str(args.groups),
                  "--base-epochs", "0", "--subnets", str(args.subnets), "--epochs", str(args.epochs), "--data-dir", str(data),
                  "--work-dir", str(work_dir), "--resume"]
    log.info("building a tiny zoo (setup, not timed): %s", " ".join(cmd[2:]))
    t0 = time.monotonic()
    res = subprocess.run(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        raise SystemExit(f"tans zoo build failed:\n{res.stderr[-3000:]}")
    log.info("built in %.0f s", time.monotonic() - t0)


def copy_zoo(runs: list, uri: str, work_dir: Path) -> int:
    """The group runs, copied into the store at ``uri`` as complete unregistered runs; returns networks."""
    import mlflow
    from mlflow.entities import Param, RunTag
    from mlflow.utils.file_utils import local_file_uri_to_path

    _point_at(uri)
    wd, _ = tracking.setup(work_dir)
    exp_id = tracking.experiment_id("zoo", wd)
    client = mlflow.MlflowClient()
    networks = 0
    for src in runs:
        tags = {k: v for k, v in src.data.tags.items() if k != "tans.complete" and not k.startswith("mlflow.")}
        run = client.create_run(exp_id, run_name=src.info.run_name, tags=tags)
        rid = run.info.run_id
        client.log_batch(rid, params=[Param(k, v) for k, v in src.data.params.items()],
                         tags=[RunTag("tans.copied_from", src.info.run_id)])
        local = Path(local_file_uri_to_path(src.info.artifact_uri))
        for child in sorted(local.iterdir()):
            if child.name == "registry":  # a registration's own folders: this trial makes them
                continue
            if child.is_dir():
                client.log_artifacts(rid, str(child), child.name)
            else:
                client.log_artifact(rid, str(child))
        networks += len(json.loads((local / "zoo" / "zoo.json").read_text())["networks"])
        client.set_tag(rid, "tans.complete", "true")
        client.set_terminated(rid)
    return networks


def synthetic_zoo(n_groups: int, uri: str, work_dir: Path, seed: int) -> int:
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_registry import PER_GROUP, create_zoo

    _point_at(uri)
    create_zoo(work_dir, n_groups, seed)
    return n_groups * PER_GROUP


# ------------------------------------------------------------------------------------------ one trial
def register_at_once(n: int, uri: str, cwd: Path) -> tuple[float, list[dict], list[str]]:
    """``n`` `tans zoo register --json` processes started together; (wall seconds, the records of those that
    succeeded, the error line of each that failed)."""
    env = _env(MLFLOW_TRACKING_URI=uri)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(TANS + ["zoo", "register", "--json", "--work-dir", str(cwd)], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    outs = [p.communicate(timeout=3600) for p in procs]
    wall = time.perf_counter() - t0
    failed = [next((ln for ln in reversed(err.splitlines()) if ln.startswith("error")), err.strip()[-300:])
              for p, (_, err) in zip(procs, outs) if p.returncode != 0]
    for line in failed:
        log.warning("a writer failed: %s", line)
    # MLflow may print "View run ... at" lines on stdout behind a server: the record is the last line
    records = [json.loads(out.strip().splitlines()[-1]) for p, (out, _) in zip(procs, outs) if p.returncode == 0]
    return wall, records, failed


def check_registered_once(uri: str) -> tuple[int, int]:
    """Every zoo network registered exactly once on the server; returns (zoo models, versions)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    models = tracking.paged(lambda n, t: client.search_registered_models("name LIKE 'zoo.%'", max_results=n,
                                                                          page_token=t))
    ids = []
    for m in models:
        ids += [v.tags["tans.network_id"] for v in tracking.paged(
            lambda n, t, name=m.name: client.search_model_versions(f"name = '{name}'", max_results=n, page_token=t),
            page_size=10000)]
    if len(ids) != len(set(ids)):
        raise SystemExit(f"{len(ids) - len(set(ids))} networks were registered more than once")
    return len(models), len(ids)


def trial(writers: int, args, runs: list) -> dict:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix=f"bench-registration-{writers}-") as tmp, \
            fresh_database(args.pg_admin) as db, tracking_server(db, Path(tmp), args.server_workers) as uri:
        work = Path(tmp) / "client"
        work.mkdir()
        t0 = time.monotonic()
        networks = (synthetic_zoo(args.synthetic_groups, uri, work, args.seed) if args.synthetic_groups
                    else copy_zoo(runs, uri, work))
        log.info("%d networks copied into the server in %.1f s (setup)", networks, time.monotonic() - t0)
        wall, records, failed = register_at_once(writers, uri, work)
        if not records:
            raise SystemExit(f"every writer failed: {failed}")
        if not failed:
            models, versions = check_registered_once(uri)
            if versions != networks:
                raise SystemExit(f"{versions} versions registered for {networks} networks")
        # the rerun: nothing to create, or (after a failed writer) what the product's error says to do
        rerun, again, failed_again = register_at_once(1, uri, work)
        if failed_again:
            raise SystemExit(f"the registration run after the writers failed: {failed_again}")
        if not failed and again[0]["created"] != 0:
            raise SystemExit(f"the second registration created {again[0]['created']} versions")
        models, versions = check_registered_once(uri)
        if versions != networks:
            raise SystemExit(f"{versions} versions registered for {networks} networks")
        served = sum(1 for p in (Path(tmp) / "artifacts").rglob("MLmodel"))
        if served < networks:
            raise SystemExit(f"{served} MLmodel folders in the served artifacts for {networks} networks")
        row = {"writers": writers, "models": models, "versions": versions,
               "wall_s": round(wall, 2), "versions_per_s": round(versions / wall, 2),
               "net_versions_per_s": round(versions / (wall - rerun), 2) if wall > rerun else None,
               "created_by_writer": [r["created"] for r in records], "rerun_s": round(rerun, 2),
               "failed_writers": len(failed), "errors": failed,
               "load_1min": round(load, 1)}
        log.info("%s", row)
        return row


def table(rows: list[dict], meta: dict) -> str:
    out = [f"Zoo: {meta['zoo']}; {meta['versions']} versions; mlflow server (--workers {meta['server_workers']}) "
           f"on PostgreSQL, loopback, served artifacts; {meta['cpus']} CPUs.", "",
           "| writers | versions | wall (s) | versions/s | idempotent rerun (s) | versions/s net of the rerun "
           "| created (each writer's record) | failed writers | load (1 min) |",
           "|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        net = f"{r['net_versions_per_s']:.2f}" if r["net_versions_per_s"] is not None else "-"
        out.append(f"| {r['writers']} | {r['versions']} | {r['wall_s']:.2f} | {r['versions_per_s']:.2f} | "
                   f"{r['rerun_s']:.2f} | {net} | {', '.join(map(str, r['created_by_writer']))} | {r['failed_writers']} | "
                   f"{r['load_1min']} |")
    out += ["", "Wall: from starting the writer processes to the last one's exit (start-up and imports included). "
            "W > 1 writers register the same zoo at once (each starting at a random group) and converge: each network ends registered once (checked on the "
            "server). Idempotent rerun: one more `tans zoo register` with nothing to create, the fixed cost of a "
            "run; net: versions / (wall - rerun). Created: the `created` of each writer's --json record (its own "
            "versions that survived the race)."]
    errors = [f"- {r['writers']} writers: {e}" for r in rows for e in r["errors"]]
    if errors:
        out += ["", "Failed writers (their registration completed by the rerun, which then had work left):", *errors]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--work-dir", type=Path, help="an embedded work directory holding a built zoo (built there "
                    "when it holds none); default: a temporary one, removed")
    ap.add_argument("--synthetic-groups", type=int, default=0, help="register N synthetic groups of 50 networks "
                    "instead of a built zoo")
    ap.add_argument("--writers", default="1,4", help="comma-separated writer counts [1,4]")
    ap.add_argument("--groups", type=int, default=4, help="groups of the tiny zoo built [4]")
    ap.add_argument("--subnets", type=int, default=5, help="networks per group of the tiny zoo built [5]")
    ap.add_argument("--epochs", type=float, default=1.0, help="epochs per group of the tiny zoo built [1]")
    ap.add_argument("--max-train", type=int, default=96)
    ap.add_argument("--max-test", type=int, default=60)
    ap.add_argument("--server-workers", type=int, default=4, help="uvicorn workers of the server [4: MLflow's]")
    ap.add_argument("--pg-admin", default=PG_ADMIN, help="PostgreSQL URI to create and drop databases with "
                    "[$TANS_TEST_PG or postgresql://root@127.0.0.1:5432/postgres]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    writers = [int(w) for w in args.writers.split(",")]
    # MLflow prints "View run ... at: http://..." on stdout when a run ends behind a server: stdout is the table's
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"

    tmp = None
    runs: list = []
    if args.synthetic_groups:
        zoo = f"{args.synthetic_groups} synthetic groups x 50 networks"
    else:
        work = args.work_dir.resolve() if args.work_dir else Path(tmp := tempfile.mkdtemp(prefix="bench-zoo-"))
        runs = source_runs(work)
        if not runs:
            build_tiny_zoo(work, args)
            runs = source_runs(work)
        if not runs:
            raise SystemExit(f"no complete zoo group runs in {work}")
        zoo = f"{len(runs)} groups built in {work if args.work_dir else 'a temporary work dir'}"
    try:
        rows = [trial(w, args, runs) for w in writers]
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = {"zoo": zoo, "versions": rows[0]["versions"], "server_workers": args.server_workers,
            "cpus": os.cpu_count()}
    print(json.dumps({"meta": meta, "rows": rows}) if args.json else table(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
