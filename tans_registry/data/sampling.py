"""Seeded, stratified splits and subsamples of label arrays."""
from __future__ import annotations

import numpy as np


def stratified_split(y: np.ndarray, test_fraction: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class: ``round(n_c * test_fraction)`` go to test, at least one to each
    side for classes of two or more images (a class of one image stays in train). Sorted."""
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(np.floor(len(idx) * test_fraction + 0.5))
        n_test = min(max(n_test, 1), len(idx) - 1) if len(idx) >= 2 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def stratified_subsample(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` items of ``y`` (all if ``n >= len(y)``), kept per class in
    proportion to the class counts (largest remainder) with every class keeping at least one
    item when ``n`` is at least the number of classes; otherwise ``n`` random classes keep one."""
    y = np.asarray(y)
    if n >= len(y):
        return np.arange(len(y))
    labels, counts = np.unique(y, return_counts=True)
    if n < len(labels):
        chosen = rng.choice(len(labels), size=n, replace=False)
        quota = np.zeros(len(labels), dtype=np.int64)
        quota[chosen] = 1
    else:  # largest remainder in exact integer arithmetic, then lift empty classes to one
        share = counts * n
        quota = share // len(y)
        order = sorted(range(len(labels)), key=lambda i: (-(share[i] % len(y)), i))
        for i in order[: n - int(quota.sum())]:
            quota[i] += 1
        for i in np.flatnonzero(quota == 0):
            quota[int(np.argmax(quota))] -= 1  # the biggest share pays, so the sum stays n
            quota[i] = 1
    keep = [rng.choice(np.flatnonzero(y == c), size=q, replace=False)
            for c, q in zip(labels, quota) if q > 0]
    return np.sort(np.concatenate(keep))
