"""Benchmark of the zoo registry: bulk registration, bytes per version, index build and load, search.

    .venv/bin/python scripts/bench_registry.py                       # Markdown tables on stdout
    .venv/bin/python scripts/bench_registry.py --sizes 1000 --stores sqlite --json

For every store (``sqlite``: a file in a temp work dir; ``postgres``: a fresh database ``tans_bench_<hex>``
on ``--pg-admin``'s server, handed over as ``MLFLOW_TRACKING_URI``) and size, synthetic complete group
runs of 50 networks are written to ``tans/zoo`` exactly as ``tans zoo build`` leaves them (setup, not
timed); then timed: ``register_zoo``, a second ``register_zoo`` (idempotent: nothing created),
``load_index(force=True)`` from the registry, ``load_index()`` from its cache, and
``MlflowClient().search_registered_models(max_results=5)`` (the Models page's call, store side only).
At the largest size, ``ZooIndex.search`` (k=10) over that index and over a synthetic in-memory
1,000,000 x 128 index. Logs go to stderr; temp dirs and databases are removed even on failure. Offline.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tans_registry import tracking  # noqa: E402
from tans_registry.registry.config import RegisterConfig  # noqa: E402
from tans_registry.registry.index import ZooIndex, load_index  # noqa: E402
from tans_registry.registry.register import register_zoo  # noqa: E402
from tans_registry.zoo.space import N_BLOCKS, N_STAGES, SupernetSpec, arch_hash, topology  # noqa: E402
from tans_registry.zoo.tensors import DEFAULT_MEAN, DEFAULT_STD  # noqa: E402

log = logging.getLogger("bench_registry")
PER_GROUP = 50   # networks per group, as in the bench profile
EMB_DIM = 1280   # functional embedding width
PG_ADMIN = os.environ.get("TANS_TEST_PG", "postgresql://root@127.0.0.1:5432/postgres")


# ---------------------------------------------------------------------- synthetic zoo (setup)
def synthetic_group(rng: np.random.Generator, g: int, run_id: str) -> tuple[dict, list[dict], np.ndarray]:
    """Header, rows and functional embeddings of one group, with the keys `_build_group` writes."""
    classes = [f"class_{c}" for c in range(int(rng.integers(2, 50)))]
    hist = rng.random(16)
    header = {"group": f"g{g:04d}", "dataset": f"ds{g % 96:02d}", "classes": classes, "input_size": 32,
              "mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD),
              "supernet": SupernetSpec(n_classes=len(classes)).to_dict(), "probe_seed": 777,
              "fingerprint": uuid.UUID(int=int(rng.integers(2**63))).hex[:16], "supernet_run": run_id,
              "descriptor": [float(v) for v in np.concatenate([rng.random(6), hist / hist.sum()])]}
    rows = []
    for i in range(PER_GROUP):
        arch = {"ks": rng.choice([3, 5, 7], N_BLOCKS).tolist(), "e": rng.choice([3, 4, 6], N_BLOCKS).tolist(),
                "d": rng.choice([2, 3, 4], N_STAGES).tolist()}
        rows.append({"index": i, "arch_hash": arch_hash(arch), "arch": arch, "topology": topology(arch),
                     "accuracy": float(rng.uniform(0.3, 0.98)), "n_params": int(rng.integers(2_140_000, 6_400_000)),
                     "flops": int(rng.integers(7_900_000, 30_400_000))})
    f_emb = np.abs(rng.standard_normal((PER_GROUP, EMB_DIM))).astype(np.float32)
    return header, rows, f_emb


def create_zoo(wd: Path, n_groups: int, seed: int) -> None:
    """Complete group runs in tans/zoo: tags tans.kind/group/dataset, artifacts zoo/zoo.json and
    zoo/embeddings.safetensors, tag tans.complete=true last (like `tans zoo build`)."""
    import mlflow
    from safetensors.numpy import save_file

    tracking.setup(wd)
    exp_id = tracking.experiment_id("zoo", wd)
    client = mlflow.MlflowClient()
    rng = np.random.default_rng(seed)
    for g in range(n_groups):
        run = client.create_run(exp_id, run_name=f"g{g:04d}", tags={"tans.kind": "zoo", "tans.group": f"g{g:04d}"})
        header, rows, f_emb = synthetic_group(rng, g, run.info.run_id)
        client.set_tag(run.info.run_id, "tans.dataset", header["dataset"])
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "zoo.json").write_text(json.dumps({"header": header, "networks": rows}, indent=1))
            save_file({"functional": f_emb}, str(Path(tmp) / "embeddings.safetensors"))
            client.log_artifacts(run.info.run_id, tmp, "zoo")
        client.set_tag(run.info.run_id, "tans.complete", "true")
        client.set_terminated(run.info.run_id)
    client.search_registered_models(max_results=1)  # open the registry store (schema check) outside timings


# ---------------------------------------------------------------------- measuring helpers
def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def time_ms(fn: Callable[[], Any], n: int, warmup: int = 2) -> list[float]:
    """Milliseconds of ``n`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return [1000.0 * timed(fn)[1] for _ in range(n)]


def tree_bytes(root: Path, part: str) -> tuple[int, int]:
    """(apparent bytes, on-disk bytes) of the files under ``root`` whose path contains ``part``."""
    files = [p for p in root.rglob("*") if p.is_file() and part in p.as_posix()]
    return sum(p.stat().st_size for p in files), sum(p.stat().st_blocks * 512 for p in files)


def db_bytes(store: str, wd: Path, db: str | None) -> int:
    if store == "sqlite":
        return sum(p.stat().st_size for p in wd.glob("mlflow.db*"))  # with -wal/-journal if any
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        return int(conn.execute("SELECT pg_database_size(%s)", (db,)).fetchone()[0])


def point_at(uri: str | None) -> None:
    """Make the next `tracking.setup` pick this store (``None``: SQLite in the work dir). The registry URI
    is cleared too, so that no scenario can inherit the previous one's (setup sets it to the tracking URI;
    the assert in bench_store checks that)."""
    import mlflow

    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    mlflow.set_registry_uri(None)
    if uri:
        os.environ["MLFLOW_TRACKING_URI"] = uri
    else:
        os.environ.pop("MLFLOW_TRACKING_URI", None)


# ---------------------------------------------------------------------- one store x one size
def bench_store(store: str, size: int, seed: int) -> tuple[dict, ZooIndex]:
    import mlflow
    import psycopg

    wd = Path(tempfile.mkdtemp(prefix=f"bench-registry-{store}-{size}-"))
    db = f"tans_bench_{uuid.uuid4().hex[:10]}" if store == "postgres" else None
    try:
        if db:
            try:
                with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f'CREATE DATABASE "{db}"')
            except psycopg.OperationalError as exc:
                db = None
                raise SystemExit(f"PostgreSQL is not reachable at {PG_ADMIN} ({str(exc).splitlines()[0]}); "
                                 "start it, pass --pg-admin, or run with --stores sqlite") from None
            point_at(PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{db}")
        else:
            point_at(None)
        n_groups = -(-size // PER_GROUP)
        log.info("%s %d: creating %d synthetic group runs in %s", store, size, n_groups, wd)
        _, t_setup = timed(lambda: create_zoo(wd, n_groups, seed))
        if mlflow.get_registry_uri() != mlflow.get_tracking_uri():
            raise RuntimeError(f"registry {mlflow.get_registry_uri()} != tracking {mlflow.get_tracking_uri()}")
        before = db_bytes(store, wd, db)
        log.info("%s %d: register_zoo", store, size)
        rec, t_reg = timed(lambda: register_zoo(RegisterConfig(work_dir=str(wd), progress=False)))
        after = db_bytes(store, wd, db)
        art, art_disk = tree_bytes(wd / "mlruns", "/artifacts/registry/")
        rec2, t_reg2 = timed(lambda: register_zoo(RegisterConfig(work_dir=str(wd), progress=False)))
        log.info("%s %d: load_index", store, size)
        (idx, irec), t_build = timed(lambda: load_index(wd, force=True, latency=False))  # random archs: no latency
        (idx2, irec2), t_load = timed(lambda: load_index(wd, latency=False))
        client = mlflow.MlflowClient()
        page_ms = statistics.median(time_ms(lambda: client.search_registered_models(max_results=5), n=20))
        out = {
            "store": store, "size": size, "groups": n_groups, "setup_s": t_setup,
            "created": rec.created, "register_s": t_reg, "register_ms_per_version": 1000 * t_reg / max(rec.created, 1),
            "db_bytes_per_version": (after - before) / max(rec.created, 1),
            "artifact_bytes_per_version": art / max(rec.created, 1),
            "artifact_disk_bytes_per_version": art_disk / max(rec.created, 1),
            "second_created": rec2.created, "second_existing": rec2.existing, "second_register_s": t_reg2,
            "index_rows": len(idx), "index_build_s": t_build, "index_load_s": t_load,
            "index_cache": irec2["cache"], "index_cache_mb": Path(irec2["path"]).stat().st_size / 2**20,
            "search_registered_models_5_ms": page_ms,
        }
        if rec.created != size or rec2.created != 0 or len(idx) != size or irec2["cache"] != "hit" or len(idx2) != size:
            log.warning("unexpected: %s", {k: out[k] for k in ("created", "second_created", "index_rows", "index_cache")})
        log.info("%s %d: %s", store, size, json.dumps(out))
        return out, idx
    finally:
        point_at(None)
        shutil.rmtree(wd, ignore_errors=True)
        if db:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


# ---------------------------------------------------------------------- search
def synthetic_index(rows: int, dim: int, seed: int) -> ZooIndex:
    rng = np.random.default_rng(seed)
    group = np.arange(rows) // PER_GROUP
    return ZooIndex(names=np.char.add("zoo.g", group.astype(str)), versions=np.arange(rows) % PER_GROUP + 1,
                    groups=np.char.add("g", group.astype(str)), datasets=np.char.add("ds", (group % 96).astype(str)),
                    accuracy=rng.uniform(0.3, 0.98, rows).astype(np.float32),
                    n_params=rng.integers(2_140_000, 6_400_000, rows), flops=rng.integers(7_900_000, 30_400_000, rows),
                    model_emb=rng.standard_normal((rows, dim), dtype=np.float32),
                    dataset_emb=np.zeros((rows, 22), np.float32),
                    topology=np.zeros((rows, 45), np.float32), arch_hashes=np.full(rows, ""), archs=np.full(rows, ""),
                    n_classes=np.full(rows, 10), latency_ms=rng.uniform(2, 9, rows).astype(np.float32),
                    encoders=np.full(rows, "synthetic"), encoder_version="synthetic", key="synthetic")


def bench_search(idx: ZooIndex, label: str, n: int, seed: int) -> list[dict]:
    """Median of ``n`` top-10 queries, with and without a max_params constraint; also with BLAS held to
    one thread, because on a busy 2-core machine a threaded matrix-vector product can wait ~8 ms for
    its second thread."""
    from threadpoolctl import threadpool_limits

    queries = np.random.default_rng(seed).standard_normal((4 * (n + 2) + 1, idx.model_emb.shape[1])).astype(np.float32)
    it = iter(queries)
    limit = int(np.median(idx.n_params))  # about half the rows pass
    _, first = timed(lambda: idx.search(next(it), k=10))  # includes the one-off row normalisation
    out = []
    for constraint in ({}, {"max_params": limit}):
        ms = time_ms(lambda: idx.search(next(it), k=10, **constraint), n=n)
        with threadpool_limits(1, "blas"):
            ms1 = time_ms(lambda: idx.search(next(it), k=10, **constraint), n=n)
        out.append({"index": label, "rows": len(idx), "dim": int(idx.model_emb.shape[1]),
                    "constraint": f"max_params<={limit:,}" if constraint else "none",
                    "passing": int(idx.mask(**constraint).sum()), "queries": n, "median_ms": statistics.median(ms),
                    "min_ms": min(ms), "median_ms_blas1": statistics.median(ms1), "first_query_ms": 1000 * first})
        log.info("search %s: %s", label, json.dumps(out[-1]))
    return out


# ---------------------------------------------------------------------- output
def markdown(res: dict) -> str:
    lines = ["| store | versions | register s | ms/version | DB B/version | artifact B/version (on disk) "
             "| 2nd register s (created) | index build s | index load s (cache) | search_registered_models(5) ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["stores"]:
        lines.append(
            f"| {r['store']} | {r['size']:,} | {r['register_s']:.1f} | {r['register_ms_per_version']:.1f} "
            f"| {r['db_bytes_per_version']:,.0f} | {r['artifact_bytes_per_version']:,.0f} "
            f"({r['artifact_disk_bytes_per_version']:,.0f}) | {r['second_register_s']:.1f} ({r['second_created']}) "
            f"| {r['index_build_s']:.1f} | {r['index_load_s']:.2f} ({r['index_cache']}, {r['index_cache_mb']:.0f} MB) "
            f"| {r['search_registered_models_5_ms']:.1f} |")
    lines += ["", "| index | rows | dims | constraint | rows passing | median ms (k=10) | min ms "
              "| median ms, BLAS 1 thread | first query ms | goal |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in res["search"]:
        goal = "< 10 ms" if s["rows"] <= 14_000 else "< 200 ms" if s["rows"] <= 1_000_000 else ""
        lines.append(f"| {s['index']} | {s['rows']:,} | {s['dim']} | {s['constraint']} | {s['passing']:,} "
                     f"| {s['median_ms']:.2f} | {s['min_ms']:.2f} | {s['median_ms_blas1']:.2f} "
                     f"| {s['first_query_ms']:.1f} | {goal} |")
    lines += ["", "Setup (synthetic runs, not timed above): "
              + ", ".join(f"{r['store']} {r['size']:,}: {r['setup_s']:.0f} s" for r in res["stores"])
              + f". Goal for the index load from cache: < 1 s at 14,000. Total wall time {res['wall_s']:.0f} s, "
              f"load average {res['machine']['load_avg_1m']:.1f} on {res['machine']['cpus']} CPUs at the end."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global PG_ADMIN
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,14000", help="comma-separated numbers of zoo versions")
    ap.add_argument("--stores", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    ap.add_argument("--queries", type=int, default=50, help="timed queries per search case (1M index: 20)")
    ap.add_argument("--big-rows", type=int, default=1_000_000, help="rows of the synthetic index (0: skip)")
    ap.add_argument("--big-dim", type=int, default=128, help="dimensions of the synthetic index")
    ap.add_argument("--pg-admin", default=PG_ADMIN, help="PostgreSQL URI used to create and drop databases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of Markdown")
    args = ap.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        stores = [s.strip() for s in args.stores.split(",") if s.strip()]
        if not sizes or min(sizes) < 1 or not set(stores) <= {"sqlite", "postgres"} or not stores:
            raise ValueError
    except ValueError:
        ap.error("--sizes takes positive integers, --stores takes sqlite and/or postgres")
    PG_ADMIN = args.pg_admin
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks on kill
    t0 = time.perf_counter()
    res: dict[str, Any] = {"stores": [], "search": []}
    for store in stores:
        for size in sorted(sizes):
            rec, idx = bench_store(store, size, args.seed)
            res["stores"].append(rec)
            if size == max(sizes) and store == stores[0]:
                res["search"] += bench_search(idx, f"registry ({store})", args.queries, args.seed)
            del idx
    if args.big_rows:
        log.info("building a synthetic %d x %d index", args.big_rows, args.big_dim)
        big = synthetic_index(args.big_rows, args.big_dim, args.seed)
        res["search"] += bench_search(big, "synthetic", min(args.queries, 20), args.seed)
    res["wall_s"] = time.perf_counter() - t0
    res["machine"] = {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}
    print(json.dumps(res, indent=1) if args.json else markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
