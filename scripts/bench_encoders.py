"""Encoder ablations on a built zoo: each variant trained with the same seed and validation datasets.

    .venv/bin/python scripts/bench_encoders.py --work-dir /tmp/bench/full --data-dir ../shared/datasets \
        [--steps 300] [--val-datasets a,b] [--json]

Variants: the default (mean pooling, hinge, functional embedding, predictor), attention pooling, InfoNCE,
no functional embedding, no predictor, uniform positives. Each is a real `tans/encoders` run (not registered, so the
champion does not move). Printed per variant: validation Recall@1/5/10, mean rank, weighted Kendall tau
of the predictor, predictor MAE, training seconds; plus the untrained encoder and the pixel-statistics
and bigger-is-better heuristics of the default run. "xtask": the cross-task protocol (own networks removed,
the other tasks of the same dataset are the positives; see tans_registry.encoders.train).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tans_registry import tracking  # noqa: E402
from tans_registry.encoders.train import EncoderTrainConfig, prepare, train_encoders  # noqa: E402

VARIANTS = {
    "default (mean, hinge, functional, predictor)": {},
    "attention pooling": {"pooling": "attention"},
    "InfoNCE": {"loss": "infonce"},
    "no functional embedding": {"use_functional": False},
    "no predictor": {"use_predictor": False},
    "uniform positives (TANS)": {"positive_sharpness": 0.0},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--val-datasets", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    base = EncoderTrainConfig(steps=args.steps, work_dir=args.work_dir, data_dir=args.data_dir, register=False,
                              val_datasets=tuple(args.val_datasets.split(",")) if args.val_datasets else None)
    # one backbone and one set of query features for every variant (same seed, K and split)
    wd, _ = tracking.setup(args.work_dir)
    t0 = time.time()
    prepared = prepare(base, tracking.experiment_id("zoo", wd))
    prep_s = time.time() - t0
    rows = {}
    for name, change in VARIANTS.items():
        print(f"bench_encoders: {name}", file=sys.stderr)
        rec = train_encoders(replace(base, **change), prepared=prepared)
        rows[name] = rec["best"] | {"seconds": rec["seconds"], "val_datasets": rec["val_datasets"]}
        if not change:
            rows["untrained encoder"] = rec["untrained"]
            rows["pixel-statistics heuristic"] = rec["pixel_heuristic"]
            rows["bigger-is-better heuristic"] = rec["size_heuristic"]
    if args.json:
        print(json.dumps(rows, default=float))
        return
    nan = float("nan")

    def cell(r, key, fmt=".3f"):
        v = r.get(key, nan)
        return format(v, fmt) if v == v else "-"

    print("| variant | R@1 | R@5 | R@10 | mean rank | xtask R@1 | xtask R@5 | xtask mean rank | weighted tau "
          "| predictor MAE | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {cell(r, 'val_recall_at_1')} | {cell(r, 'val_recall_at_5')} | {cell(r, 'val_recall_at_10')} "
              f"| {cell(r, 'val_mean_rank', '.1f')} | {cell(r, 'val_xtask_recall_at_1')} "
              f"| {cell(r, 'val_xtask_recall_at_5')} | {cell(r, 'val_xtask_mean_rank', '.1f')} "
              f"| {cell(r, 'val_weighted_tau')} | {cell(r, 'val_pred_mae')} | {cell(r, 'seconds', '.0f')} |")
    print(f"\nvalidation datasets: {', '.join(rows[next(iter(VARIANTS))]['val_datasets'])}; backbone and query "
          f"features, shared by the variants: {prep_s:.0f} s (not in the s column)")


if __name__ == "__main__":
    main()
