"""The benchmark's figures, from fine-tuned accuracies (no torch: tested against hand-computed values).

- regret: the oracle's test accuracy (the best fine-tuned candidate) minus a method's, in points; top-3
  regret takes the best of the method's first three picks;
- weighted Kendall tau (:func:`scipy.stats.weightedtau`, hyperbolic weights on both rankings, averaged)
  of a scorer's values against the fine-tuned accuracies of the same networks;
- epochs to a target: the first epoch whose validation accuracy reaches it (None: never).
"""
from __future__ import annotations

import math

import numpy as np


def regret(oracle: float, picks: list[float], k: int = 1) -> float | None:
    """Points below the oracle of the best of the first ``k`` picks' accuracies (None: no pick)."""
    if not picks:
        return None
    return 100.0 * (oracle - max(picks[:k]))


def weighted_tau(scores, truth) -> float | None:
    """Weighted Kendall tau between a scorer's values and the ground truth (None: fewer than 3 values or
    one of them constant, where a rank correlation says nothing)."""
    from scipy.stats import weightedtau

    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    ok = np.isfinite(s) & np.isfinite(t)
    s, t = s[ok], t[ok]
    if len(s) < 3 or np.ptp(s) == 0 or np.ptp(t) == 0:
        return None
    value = float(weightedtau(s, t).statistic)
    return None if math.isnan(value) else value


def epochs_to(history: list[float], target: float) -> int | None:
    """The first epoch (1-based) whose validation accuracy is at least ``target``; None if none is."""
    for epoch, acc in enumerate(history, start=1):
        if acc >= target - 1e-12:
            return epoch
    return None


def spread_sample(order: list[int], sizes: dict[int, int], n: int, must: list[int]) -> list[int]:
    """At least ``n`` distinct network rows for the ground truth: every row of ``must``, then rows evenly
    spaced along the retrieval ``order`` and along the size range (``sizes``: row -> parameters), offered
    alternately from both ends inwards, until ``n`` are chosen."""
    chosen: list[int] = list(dict.fromkeys(must))
    if len(order) <= n:
        return list(dict.fromkeys(chosen + list(order)))
    place = {r: i for i, r in enumerate(order)}
    by_size = sorted(order, key=lambda r: (sizes[r], place[r]))
    pos = np.rint(np.linspace(0, len(order) - 1, n)).astype(int)
    inward = [int(pos[i // 2] if i % 2 == 0 else pos[-1 - i // 2]) for i in range(n)]
    offers = [seq[p] for p in inward for seq in (order, by_size)]
    for r in offers + list(order):  # the retrieval order tops up where spaced rows repeat
        if len(chosen) >= n:
            break
        if r not in chosen:
            chosen.append(r)
    return chosen


# ----------------------------------------------------------------------------- oracle, bootstrap, spread

def oracle_pick(val_acc: dict, test_acc: dict, k: int = 1) -> list:
    """The benchmark's oracle: the ``k`` ground-truth candidates with the best VALIDATION accuracy, best
    first (the oracle itself is the first; it is scored by its TEST accuracy, and the top-k oracle by the
    best test accuracy among these k, see :func:`oracle_topk_test`).

    Only candidates present in both dicts with a finite validation accuracy are ranked (one without a test
    accuracy cannot be scored). Ties in validation accuracy keep the order the keys have in ``val_acc``
    (dict order: a stable sort), so the earlier key wins."""
    ranked = [c for c, v in val_acc.items() if c in test_acc and v is not None and math.isfinite(v)]
    ranked.sort(key=lambda c: -float(val_acc[c]))          # stable: ties stay in dict order
    return ranked[:max(int(k), 0)]


def oracle_topk_test(val_acc: dict, test_acc: dict, k: int = 1) -> float | None:
    """Test accuracy scored by the oracle: the max test accuracy among the top-``k`` by validation
    (``k=1``: the best-validation candidate's test accuracy). None: no candidate to rank."""
    picks = oracle_pick(val_acc, test_acc, k)
    return max(float(test_acc[c]) for c in picks) if picks else None


def upper_bound(test_acc: dict) -> float | None:
    """The "best test (upper bound)" column: the max test accuracy over all candidates, which no method
    choosing by validation can be guaranteed to reach (it is picked with test data). None: no candidate."""
    vals = [float(v) for v in test_acc.values() if v is not None and math.isfinite(v)]
    return max(vals) if vals else None


def regret_vs(oracle_test: float, acc: float) -> float:
    """Points below the oracle's test accuracy: ``100 * (oracle_test - acc)``. The oracle is picked by
    VALIDATION accuracy, so its test accuracy can be below a method's and the regret can be negative; it is
    not clipped at zero."""
    return 100.0 * (float(oracle_test) - float(acc))


def paired_bootstrap(diffs, n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap interval of the mean of paired differences (one per dataset x seed pair, in the
    units given: points or accuracy). The PAIRS are resampled with replacement, ``n_boot`` times:
    ``np.random.default_rng(seed).integers(0, n, size=(n_boot, n))`` indexes the diffs, each resample's
    mean is taken, and ``low``/``high`` are ``np.quantile`` (method 'linear') of those means at
    ``(1 - level) / 2`` and ``1 - (1 - level) / 2``. Deterministic for a given seed.

    Returns {"mean", "low", "high", "n", "level", "n_boot"}; n == 0: mean/low/high None; n == 1:
    low == high == mean (one pair has no spread to resample)."""
    d = np.asarray(diffs, dtype=np.float64).reshape(-1)
    n = int(d.size)
    out = {"mean": None, "low": None, "high": None, "n": n, "level": float(level), "n_boot": int(n_boot)}
    if n == 0:
        return out
    mean = float(d.mean())
    if n == 1:
        return {**out, "mean": mean, "low": mean, "high": mean}
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    means = d[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return {**out, "mean": mean, "low": float(low), "high": float(high)}


def mean_spread(values) -> dict:
    """A per-dataset mean over seeds with its spread: {"mean", "std", "n", "values"}. ``std`` is the SAMPLE
    standard deviation (ddof=1) when n > 1, else 0.0; n == 0: mean and std None."""
    v = [float(x) for x in values]
    n = len(v)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "values": []}
    a = np.asarray(v, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if n > 1 else 0.0, "n": n, "values": v}
