"""The project's retrieval defaults, chosen on the selection datasets by rules fixed before the figures.

    .venv/bin/python scripts/choose_defaults.py plain.json head_first.json

Each file is what `tans bench --selection --json` prints (the selection datasets, each without its own
groups): ``plain.json`` with the product's recipe, ``head_first.json`` with ``--head-first``, on the same work
directory, seeds and settings. The rules (written 2026-12-07, before any selection run of these methods):

1. **The query's re-ranking policy** (`tans query --rerank` default): of ``none`` (method ``tans``),
   ``predictor`` (``tans_predictor``), ``logme`` (``tans_logme``) and ``hybrid`` (``tans_hybrid``), the one with
   the highest mean test accuracy at the full budget over the (dataset, seed) pairs of ``plain.json``; a tie
   (within 0.1 point) goes to the one with fewer forward passes.
2. **The hybrid policy's transferability score** (``HYBRID_SCORE``): of LogME, LEEP and NCE, the one with the
   highest mean weighted tau against the fine-tuned accuracies over the pairs of ``plain.json``.
3. **The recipe** (``FinetuneSettings.head_first``): head-first when, for the chosen policy's start, the
   paired difference head-first minus plain over the (dataset, seed) pairs has a mean above 0 and its 95%
   bootstrap interval above 0; plain otherwise (the simpler recipe unless the other is shown better).

Prints each figure, the choice and its margin; writes nothing (the defaults are set by hand in the code,
citing this output in BENCHMARKS.md).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tans_registry.bench.metrics import paired_bootstrap  # noqa: E402

POLICIES = {"none": "tans", "predictor": "tans_predictor", "logme": "tans_logme", "hybrid": "tans_hybrid"}
SCORES = ("logme", "leep", "nce")


def per_pair(doc: dict, method: str, key: str = "test_acc") -> dict[tuple[str, int], float]:
    out = {}
    for name, d in doc["datasets"].items():
        for s in d["per_seed"]:
            m = s["methods"].get(method)
            if m is not None and m.get(key) is not None:
                out[(name, int(s["seed"]))] = float(m[key])
    return out


def taus(doc: dict, scorer: str) -> list[float]:
    return [v for d in doc["datasets"].values() for v in d.get("weighted_tau_seeds", {}).get(scorer, []) if v is not None]


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plain", help="`tans bench --selection --json` output")
    ap.add_argument("head_first", help="`tans bench --selection --head-first --json` output, same seeds")
    args = ap.parse_args()
    plain, head = (json.loads(Path(p).read_text()) for p in (args.plain, args.head_first))
    if not all(set(d["datasets"]) for d in (plain, head)):
        raise SystemExit("both files need datasets: run `tans bench --selection --json`")
    print("1. re-ranking policy (mean test accuracy, full budget, over (dataset, seed) pairs):")
    means, passes = {}, {}
    for policy, method in POLICIES.items():
        vals = per_pair(plain, method)
        if vals:
            means[policy] = float(np.mean(list(vals.values())))
            passes[policy] = float(np.mean(list(per_pair(plain, method, "forward_passes").values()) or [0]))
            print(f"   {policy:<10} {means[policy]:.4f} ({len(vals)} pairs, {passes[policy]:.0f} forward passes)")
    best = max(means.values())
    tied = [p for p in means if best - means[p] <= 0.001]
    policy = min(tied, key=lambda p: passes[p])
    runner = max((v for p, v in means.items() if p != policy), default=None)
    print(f"   -> {policy} (margin over the next: {100 * (means[policy] - runner):+.2f} points)" if runner is not None
          else f"   -> {policy}")
    print("2. hybrid score (mean weighted tau over pairs):")
    score_means = {s: float(np.mean(taus(plain, s))) for s in SCORES if taus(plain, s)}
    for s, v in score_means.items():
        print(f"   {s:<6} {v:.3f} ({len(taus(plain, s))} pairs)")
    score = max(score_means, key=score_means.get) if score_means else "logme"
    print(f"   -> {score}")
    print(f"3. recipe (head-first minus plain, {POLICIES[policy]}'s start, points):")
    a, b = per_pair(head, POLICIES[policy]), per_pair(plain, POLICIES[policy])
    diffs = [100.0 * (a[k] - b[k]) for k in sorted(set(a) & set(b))]
    iv = paired_bootstrap(diffs, seed=0)
    if not iv["n"]:
        raise SystemExit("the two files share no (dataset, seed) pair: run both on the same seeds")
    print(f"   mean {iv['mean']:+.2f} [{iv['low']:+.2f}, {iv['high']:+.2f}] over {iv['n']} pairs")
    first = iv["mean"] > 0 and iv["low"] > 0
    print(f"   -> {'head-first' if first else 'plain'}")


if __name__ == "__main__":
    main()
