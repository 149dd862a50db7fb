"""Summarise a built zoo for BENCHMARKS.md: per group accuracy range, logistic-regression floor, cost.

    .venv/bin/python scripts/zoo_report.py --work-dir . [--json] [--compare SNAPSHOT.npz]

Reads the complete runs of experiment ``tans/zoo`` (the latest per group) and prints a Markdown table:
group, source dataset, train images, best / smallest-net / largest-net test accuracy, spread, logistic
regression on raw pixels (bench profile), whether the best network beats it, and seconds spent; then
per-dataset totals and the time per step and per measured network, to extrapolate other budgets.
``--compare`` adds, per group, the best accuracy of an earlier build saved with ``tans encoders bench
--save-snapshot`` (e.g. ``benchmarks/zoo-bench-snapshot.npz``) and the change since.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tans_registry import tracking  # noqa: E402
from tans_registry.zoo.generalist import GROUP as GENERALIST  # noqa: E402
from tans_registry.zoo.store import finished_group_runs, read_table  # noqa: E402
from tans_registry.zoo.profiles import TrainConfig  # noqa: E402
from tans_registry.zoo.train import n_train_steps  # noqa: E402


def collect(work_dir: str | None) -> list[dict]:
    wd, _ = tracking.setup(work_dir)
    rows = []
    for group, run in sorted(finished_group_runs(tracking.experiment_id("zoo", wd)).items()):
        m, p = run.data.metrics, run.data.params
        if group == "__base__":
            rows.append({"group": group, "dataset": "(pooled)", "n_train": int(p.get("n_images", 0)),
                         "seconds": (run.info.end_time - run.info.start_time) / 1000.0, "base": True})
            continue
        nets = read_table(run.info.run_id)["networks"]
        tcfg = TrainConfig(epochs=float(p.get("train_epochs", 1)), batch_size=int(p.get("train_batch_size", 64)),
                           steps_per_class=int(p.get("train_steps_per_class", 0)),
                           max_epochs=float(p.get("train_max_epochs", 30)))
        rows.append({
            "group": group, "dataset": run.data.tags.get("tans.dataset", group),
            "n_train": int(p.get("n_train", 0)), "n_classes": int(p.get("n_classes", 0)),
            "networks": len(nets), "best": m.get("best_acc"), "smallest": m.get("smallest_acc"),
            "largest": m.get("largest_acc"), "spread": m.get("acc_spread"), "logreg": m.get("logreg_acc"),
            "seconds": m.get("seconds"), "init": p.get("init"),
            "steps": 0 if group == GENERALIST else n_train_steps(int(p.get("n_train", 0)), int(p.get("n_classes", 0)), tcfg),
            "generalist": group == GENERALIST,  # the base supernet's subnets: measured, not trained
            "start": run.info.start_time / 1000.0, "end": run.info.end_time / 1000.0,
            "params_range": [min(n["n_params"] for n in nets), max(n["n_params"] for n in nets)],
        })
    return rows


def snapshot_best(path: str) -> dict[str, float]:
    """Best measured accuracy per group of a zoo snapshot (no pickle: ``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as z:
        return {k.split("/", 1)[1]: float(z[k].max()) for k in z.files if k.startswith("accuracy/")}


def markdown(rows: list[dict], before: dict[str, float] | None = None) -> str:
    extra = " best before | change |" if before is not None else ""
    out = ["| group | dataset | classes | train | steps | nets | best | smallest | largest | spread | logreg | beats "
           "| s |" + extra,
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if extra else "")]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        if r.get("base"):
            out.append(f"| base supernet | {r['dataset']} | | {r['n_train']} | | | | | | | | | {r['seconds']:.0f} |"
                       + (" | |" if before is not None else ""))
            continue
        beats = "-" if r["logreg"] is None else ("yes" if r["best"] > r["logreg"] else "**no**")
        out.append(f"| {r['group']} | {r['dataset']} | {r['n_classes']} | {r['n_train']} | {r['steps']} | "
                   f"{r['networks']} | "
                   f"{f(r['best'])} | {f(r['smallest'])} | {f(r['largest'])} | {f(r['spread'])} | "
                   f"{f(r['logreg'])} | {beats} | {r['seconds']:.0f} |" + _compared(r, before))
    groups = [r for r in rows if not r.get("base") and not r.get("generalist")]
    total = sum(r["seconds"] for r in rows)
    out.append("")
    out.append(f"{len(groups)} groups, {sum(r['networks'] for r in groups)} networks, {total / 60:.1f} min of "
               f"recorded build time; best network beats logistic regression on "
               f"{sum(1 for r in groups if r['logreg'] is not None and r['best'] > r['logreg'])} of "
               f"{sum(1 for r in groups if r['logreg'] is not None)} groups with a baseline.")
    if groups:
        wall = max(r["end"] for r in groups) - min(r["start"] for r in groups)
        base = sum(r["seconds"] for r in rows if r.get("base"))
        out.append(f"Wall clock: base {base / 60:.1f} min, groups {wall / 60:.1f} min (first start to last end; "
                   f"groups built side by side overlap), {(base + wall) / 60:.1f} min in all.")
    by_ds: dict[str, list[dict]] = {}
    for r in groups:
        by_ds.setdefault(r["dataset"], []).append(r)
    out += ["", "| dataset | groups | groups beating logreg | best - logreg, worst group | spread (min-max over groups) |",
            "|---|---|---|---|---|"]
    for ds, rs in sorted(by_ds.items()):
        based = [r for r in rs if r["logreg"] is not None]
        gap = min((r["best"] - r["logreg"] for r in based), default=None)
        out.append(f"| {ds} | {len(rs)} | {sum(1 for r in based if r['best'] > r['logreg'])} of {len(based)} | "
                   f"{'-' if gap is None else f'{gap:+.3f}'} | {min(r['spread'] for r in rs):.3f}-"
                   f"{max(r['spread'] for r in rs):.3f} |")
    return "\n".join(out)


def _compared(r: dict, before: dict[str, float] | None) -> str:
    if before is None:
        return ""
    b = before.get(r["group"])
    return " - | - |" if b is None else f" {b:.3f} | {round(r['best'] - b, 3) + 0.0:+.3f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--compare", metavar="SNAPSHOT", default=None,
                    help="zoo snapshot (.npz from `tans encoders bench --save-snapshot`) whose best accuracy per group to show")
    args = ap.parse_args()
    if args.compare and not Path(args.compare).is_file():
        sys.exit(f"error: no zoo snapshot at {args.compare}: write one with `tans encoders bench --save-snapshot FILE`")
    rows = collect(args.work_dir)
    before = snapshot_best(args.compare) if args.compare else None
    if args.json:
        for r in rows:
            if before is not None and r["group"] in before:
                r["best_before"] = before[r["group"]]
        print(json.dumps(rows))
    else:
        print(markdown(rows, before))


if __name__ == "__main__":
    main()
