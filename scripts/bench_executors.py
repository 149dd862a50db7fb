"""Zoo-build wall time: the local executor against Ray, on this machine, side by side in one run.

    .venv/bin/python scripts/bench_executors.py                         # quick profile, demo data
    .venv/bin/python scripts/bench_executors.py --groups 4 --subnets 10 --epochs 4 --json

Each trial is one `tans zoo build` process into its own fresh work directory (the same profile, data and
seed), timed from its start to its exit, as a user sees it (imports, data loading, Ray's start and stop
included): ``local --workers 1``, ``local --workers W`` (W: the cores) and ``ray`` (a local Ray cluster the
command starts for itself, one task per group, one CPU each). The networks of every trial are compared
(datasets, architectures, parameter counts per group): the table says whether they are the same. A
Markdown table on stdout (``--json``: one document), the builds' own output on stderr. Offline.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _build(work: Path, args, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "tans_registry.cli", "zoo", "build", "--profile", args.profile,
           "--work-dir", str(work), "--seed", str(args.seed), "--json", *extra]
    for flag, value in (("--groups", args.groups), ("--subnets", args.subnets), ("--epochs", args.epochs),
                        ("--base-epochs", args.base_epochs),
                        ("--datasets", args.datasets), ("--data-dir", args.data_dir)):
        if value is not None:
            cmd += [flag, str(value)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True, env=os.environ | {"RAY_ADDRESS": ""})
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}")
    return seconds


def _networks(work: Path) -> dict:
    import mlflow

    from tans_registry import tracking
    from tans_registry.zoo import store

    tracking.setup(str(work))
    runs = store.finished_group_runs(tracking.experiment_id("zoo", work))
    out = {g: (r.data.tags.get("tans.dataset"), [(json.dumps(n["arch"], sort_keys=True), n["n_params"])
                                                 for n in store.read_table(r.info.run_id)["networks"]])
           for g, r in runs.items()}
    mlflow.set_tracking_uri(None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--datasets", default=None, help="comma-separated, replacing the profile's")
    ap.add_argument("--groups", type=int, default=None)
    ap.add_argument("--subnets", type=int, default=None)
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--base-epochs", type=float, default=0.0,
                    help="the base supernet's epochs (default 0: the groups alone, as BENCHMARKS.md's figures were "
                         "measured before the quick profile had a base)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    trials = [("local", ["--workers", "1"]), ("local", ["--workers", str(cores)]), ("ray", ["--executor", "ray"])]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-executors-") as tmp:
        for i, (name, extra) in enumerate(trials):
            work = Path(tmp) / f"t{i}"
            print(f"bench_executors: {name} {' '.join(extra)}", file=sys.stderr, flush=True)
            seconds = _build(work, args, extra)
            rows.append({"executor": name, "args": " ".join(extra), "seconds": seconds, "networks": _networks(work)})
    ref = rows[0]["networks"]
    for r in rows:
        r["same_networks"] = r["networks"] == ref
        r["groups"] = len(r["networks"])
        r["n_networks"] = sum(len(v[1]) for v in r["networks"].values())
        del r["networks"]
    if args.json:
        print(json.dumps({"cores": cores, "trials": rows}))
        return
    base = rows[0]["seconds"]
    print("| executor | options | groups x networks | wall s | vs local --workers 1 | same networks |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['executor']} | `{r['args']}` | {r['groups']} groups, {r['n_networks']} networks | "
              f"{r['seconds']:.1f} | {r['seconds'] / base:.2f}x | {'yes' if r['same_networks'] else 'no'} |")


if __name__ == "__main__":
    main()
