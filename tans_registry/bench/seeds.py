"""The benchmark over seeds (no torch): one dataset's figures at several seeds -> their mean and spread
(:func:`aggregate`), and the pooled paired intervals over every (dataset, seed) pair
(:func:`pooled_intervals`).

Each seed draws its own stratified training sample, validation split, head init and random draws; a
dataset's ``test_acc`` is the mean over its seeds, ``spread`` their standard deviation, ``seeds`` the values.
"""
from __future__ import annotations

import numpy as np

from . import metrics as M

MEAN_FIELDS = ("test_acc", "test_acc_one_epoch", "probe_test_acc", "regret_top1", "regret_top1_one_epoch",
               "regret_top3", "regret_top3_one_epoch", "query_seconds", "test_acc_std", "test_acc_one_epoch_std", "answer_test_acc")
SEED_FIELDS = ("test_acc", "test_acc_one_epoch", "probe_test_acc", "regret_top1", "regret_top1_one_epoch",
               "regret_top3", "answer_test_acc")
# The paired differences the benchmark's decisions rest on (points, a ranked method minus the other), both budgets:
# retrieval's top-1 (the first benchmark's "tans"), the predictor's re-rank (`tans query`'s default) and the hybrid.
PAIRS = tuple((a, b) for a in ("tans", "tans_predictor", "tans_logme", "tans_hybrid") for b in ("best_average", "random"))


def _mean(values: list) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals and len(vals) == len(values) else None


def _method(per: list[dict]) -> dict:
    out: dict = {}
    for k in MEAN_FIELDS:
        if any(k in m for m in per):
            out[k] = _mean([m.get(k) for m in per])
    passes = [m.get("forward_passes") for m in per]
    out["forward_passes"] = (passes[0] if len(set(passes)) == 1 else _mean(passes))
    out["epochs_to_scratch"] = _mean([m.get("epochs_to_scratch") for m in per])
    hists = [m.get("val_history") or [] for m in per]
    n = min(len(h) for h in hists)
    out["val_history"] = [float(np.mean([h[e] for h in hists])) for e in range(n)]
    out["spread"] = {k: M.mean_spread([m[k] for m in per])["std"] for k in ("test_acc", "test_acc_one_epoch")
                     if all(m.get(k) is not None for m in per)}
    out["seeds"] = {k: [m.get(k) for m in per] for k in SEED_FIELDS if any(k in m for m in per)}
    if "draws" in per[0]:
        out["draws"] = per[0]["draws"]
    out["picks"] = per[0].get("picks", [])
    out["picks_by_seed"] = [m.get("picks", []) for m in per]
    return out


def aggregate(per_seed: list[dict]) -> dict:
    """One dataset's figures over its seeds (each a :func:`~.stage._figures` result with ``seed``)."""
    first = per_seed[0]
    names = [n for n in first["methods"] if all(n in s["methods"] for s in per_seed)]
    # a seed whose scorer had no tau (constant values) leaves the dataset's mean undefined, like every field
    tau = {k: _mean([s["weighted_tau"].get(k) for s in per_seed]) for k in first["weighted_tau"]}
    ds = dict(first["dataset"])
    ds.pop("fingerprint", None)
    ds["fingerprints"] = [s["dataset"]["fingerprint"] for s in per_seed]
    return {"dataset": ds, "budgets": first["budgets"], "seeds": [s["seed"] for s in per_seed],
            "methods": {n: _method([s["methods"][n] for s in per_seed]) for n in names},
            "weighted_tau": tau,
            "weighted_tau_seeds": {k: [s["weighted_tau"].get(k) for s in per_seed] for k in first["weighted_tau"]},
            "oracle": {b: _mean([s["oracle"][b] for s in per_seed]) for b in ("one_epoch", "full")},
            "upper_bound": {b: _mean([s["upper_bound"][b] for s in per_seed]) for b in ("one_epoch", "full")},
            "floors": {"logreg_pixels": _mean([s["floors"]["logreg_pixels"] for s in per_seed]),
                       "logreg_pixels_seeds": [s["floors"]["logreg_pixels"] for s in per_seed]},
            "scratch_target": {"val_accuracy": _mean([s["scratch_target"]["val_accuracy"] for s in per_seed]),
                               "scratch_epochs": _mean([s["scratch_target"]["scratch_epochs"] for s in per_seed])},
            "preparation": [s["preparation"] for s in per_seed],
            "ground_truth": {"networks": int(round(np.mean([s["ground_truth"]["networks"] for s in per_seed]))),
                             "by_seed": [s["ground_truth"] for s in per_seed]},
            "per_seed": [{k: v for k, v in s.items() if k != "ground_truth"} for s in per_seed]}


def pairs(datasets: dict, fn) -> list[float]:
    """``fn(seed_figures)`` over every (dataset, seed) pair, where it is not None."""
    out = []
    for d in datasets.values():
        for s in d["per_seed"]:
            v = fn(s)
            if v is not None:
                out.append(float(v))
    return out


def pooled_intervals(datasets: dict, seed: int = 0, n_boot: int = 10000) -> dict:
    """Paired 95% bootstrap intervals over the (dataset, seed) pairs (points): tans minus best_average and
    minus random, and each method's top-1 regret, at both budgets."""
    def acc(s, name, key):
        m = s["methods"].get(name)
        return None if m is None or m.get(key) is None else m[key]

    out = {}
    for budget, key in (("", "test_acc"), ("_one_epoch", "test_acc_one_epoch")):
        for a, b in PAIRS:
            diffs = pairs(datasets, lambda s: None if acc(s, a, key) is None or acc(s, b, key) is None
                          else 100.0 * (acc(s, a, key) - acc(s, b, key)))
            out[f"{a}_minus_{b}{budget}"] = M.paired_bootstrap(diffs, n_boot=n_boot, seed=seed)
    names = sorted({n for d in datasets.values() for n in d["methods"] if n != "oracle"})
    for n in names:
        for budget, key in (("", "regret_top1"), ("_one_epoch", "regret_top1_one_epoch")):
            out[f"regret_{n}{budget}"] = M.paired_bootstrap(pairs(datasets, lambda s: acc(s, n, key)),
                                                            n_boot=n_boot, seed=seed)
    return out
