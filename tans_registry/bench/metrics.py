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
