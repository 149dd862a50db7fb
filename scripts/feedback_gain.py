"""Does the zoo learn from its queries? For each reported dataset, the transfer predictor trained with the records
of the *other* reported datasets' queries (the benchmark's fine-tunings, source ``bench``) against without them,
scored on that dataset's own benchmark records (their fine-tuned test accuracies): the mean top-1 regret (best
recorded accuracy minus that of the record it ranks first, per task, in points) and the weighted tau.

    .venv/bin/python scripts/feedback_gain.py --work-dir W --data-dir ../shared/datasets [--json out.json]

On a work directory where `tans bench-chain` (or `tans zoo transfer`, `tans encoders train`, `tans bench`) ran:
the champion encoders stay frozen; the predictor's variant is the champion's (chosen on the selection
datasets). A dataset's own records never train the predictor that is scored on them. Prints one row per
dataset and the paired mean difference (with minus without) with its 95% bootstrap interval over datasets.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tans_registry import tracking  # noqa: E402


def concat(parts: list):
    """One set of examples from several (their task indices offset); None when none is usable."""
    import torch

    from tans_registry.training.transfer_fit import Examples

    parts = [e for e in parts if e is not None and len(e)]
    if not parts:
        return None
    offsets = np.cumsum([0] + [len(e.q) for e in parts[:-1]])
    return Examples(task=np.concatenate([e.task + o for e, o in zip(parts, offsets)]),
                    q=torch.cat([e.q for e in parts]), datasets=[d for e in parts for d in e.datasets],
                    m=torch.cat([e.m for e in parts]), topology=torch.cat([e.topology for e in parts]),
                    log_params=torch.cat([e.log_params for e in parts]), source=torch.cat([e.source for e in parts]),
                    source_acc=torch.cat([e.source_acc for e in parts]),
                    target=np.concatenate([e.target for e in parts]), skipped=sum(e.skipped for e in parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--seed", type=int, default=777, help="the encoders' training seed (their query sets)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    from tans_registry.bench.metrics import paired_bootstrap
    from tans_registry.data import report_datasets
    from tans_registry.finetune.config import FinetuneSettings
    from tans_registry.retrieval.embed import load_champion, query_sets
    from tans_registry.training.stage import _starts
    from tans_registry.training.transfer_fit import VARIANTS, gather, mean_regret, mean_tau, train_variant
    from tans_registry.transfer.records import read_records
    from tans_registry.zoo.meta import load_meta_groups

    wd, _ = tracking.setup(args.work_dir)
    champ = load_champion()
    enc = champ.encoders
    if enc.transfer is None:
        raise SystemExit("the champion encoders have no transfer predictor: run `tans zoo transfer`, then "
                         "`tans encoders train`")
    variant = next(v for v, (loss, src) in VARIANTS.items()
                   if loss == enc.cfg.transfer_loss and src == enc.cfg.transfer_source)
    exp = tracking.experiment_id("transfer", wd)
    table = read_records(exp, "table") + read_records(exp, "query")
    # the reported datasets' benchmark records only (never a selection run's), of one recipe: the product's
    reported = set(report_datasets(args.data_dir))
    if not reported:
        raise SystemExit(f"{args.data_dir} has no MANIFEST.json naming `report` datasets: the measurement is over the "
                         "reported datasets; pass the data directory the benchmark ran on")
    bench = [r for r in read_records(exp, "bench") if r["task_dataset"] in reported]
    recipe = str(FinetuneSettings().head_first)
    if len({r["head_first"] for r in bench}) > 1:
        print(f"benchmark records of both recipes: keeping the default's (head_first={recipe})")
        bench = [r for r in bench if r["head_first"] == recipe]
    if not bench:
        raise SystemExit("no benchmark records of the reported datasets in tans/transfer: run `tans bench` (or "
                         "`tans bench-chain`) on this work directory first")
    groups = load_meta_groups(tracking.experiment_id("zoo", wd), args.data_dir)
    feats = query_sets(champ.run_id)
    for g in groups:  # the query sets the champion was trained with (no second backbone pass)
        g.features = feats.get(g.name)
    groups = [g for g in groups if g.features is not None]
    starts = _starts(groups, {k: v for k, v in feats.items() if k not in {g.name for g in groups}},
                     tracking.experiment_id("zoo", wd))

    def by_dataset(records: list[dict]) -> dict:
        """Each task dataset's examples, gathered once (each gather loads its tasks and embeds them)."""
        out = {}
        for d in sorted({r["task_dataset"] for r in records}):
            out[d] = gather(enc, [r for r in records if r["task_dataset"] == d], starts, champ.backbone,
                            args.data_dir, enc.cfg.k_per_class, args.seed)
        return out

    table_ex, bench_ex = by_dataset(table), by_dataset(bench)
    rows = []
    for name in sorted(bench_ex):
        held = bench_ex[name]
        # a dataset's own records never train the predictor scored on it (table or benchmark)
        base = concat([e for d, e in table_ex.items() if d != name])
        more = concat([e for d, e in table_ex.items() if d != name] + [e for d, e in bench_ex.items() if d != name])
        if held is None or base is None or more is None:
            print(f"{name}: records not usable (data or starts not found); skipped")
            continue
        m_without = train_variant(enc.cfg, variant, base, args.seed)
        m_with = train_variant(enc.cfg, variant, more, args.seed)
        row = {"dataset": name, "records": len(held), "regret_without": mean_regret(m_without, held),
               "regret_with": mean_regret(m_with, held), "tau_without": mean_tau(m_without, held),
               "tau_with": mean_tau(m_with, held)}
        rows.append(row)
        print(f"{name:<26} {len(held):>4} records  regret without {row['regret_without']:5.2f} with "
              f"{row['regret_with']:5.2f}  tau without {row['tau_without']:+.3f} with {row['tau_with']:+.3f}")
    out = {"variant": variant, "rows": rows}
    for key, unit in (("regret", "points"), ("tau", "")):
        diffs = [r[f"{key}_with"] - r[f"{key}_without"] for r in rows
                 if np.isfinite(r[f"{key}_with"]) and np.isfinite(r[f"{key}_without"])]
        iv = out[f"{key}_interval"] = paired_bootstrap(diffs, seed=0)
        if iv["mean"] is not None:
            print(f"{key} with minus without: {iv['mean']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}] {unit} over "
                  f"{iv['n']} datasets" + (" (goal: regret no worse, i.e. mean <= 0)" if key == "regret" else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
