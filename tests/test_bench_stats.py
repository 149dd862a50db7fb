"""The benchmark's statistics and floors against hand-computed values: the validation-picked oracle (and
the test upper bound), the paired percentile bootstrap, the mean over seeds with its spread, and the
logistic-regression floors on pixels and on frozen features. No torch."""
from __future__ import annotations

import numpy as np
import pytest

from tans_registry.bench import floors as F
from tans_registry.bench import metrics as M

# validation and test disagree: "a" is best by validation but worst by test; "d" is best by test
VAL = {"a": 0.90, "b": 0.80, "c": 0.70, "d": 0.60}
TEST = {"a": 0.70, "b": 0.85, "c": 0.80, "d": 0.90}


def test_the_oracle_is_the_validation_pick_scored_by_its_test_accuracy():
    assert M.oracle_pick(VAL, TEST) == ["a"]                 # not "d", the best by test
    assert M.oracle_topk_test(VAL, TEST) == pytest.approx(0.70)
    assert M.upper_bound(TEST) == pytest.approx(0.90)        # the best test, picked with test data
    assert M.oracle_pick(VAL, TEST, k=3) == ["a", "b", "c"]
    assert M.oracle_topk_test(VAL, TEST, k=3) == pytest.approx(0.85)   # max test of a, b, c
    assert M.oracle_pick(VAL, TEST, k=10) == ["a", "b", "c", "d"]
    # the oracle's test accuracy can be below a method's: regret is negative, not clipped
    assert M.regret_vs(0.70, 0.85) == pytest.approx(-15.0)
    assert M.regret_vs(0.90, 0.85) == pytest.approx(5.0)


def test_oracle_ties_keep_dict_order_and_unscorable_candidates_are_skipped():
    assert M.oracle_pick({"x": 0.5, "y": 0.5, "z": 0.4}, {"x": 0.1, "y": 0.9, "z": 1.0}, k=2) == ["x", "y"]
    assert M.oracle_pick({"y": 0.5, "x": 0.5}, {"x": 0.1, "y": 0.9}) == ["y"]
    # "a" has no test accuracy and "b" no finite validation accuracy: "c" is the oracle
    assert M.oracle_pick({"a": 0.99, "b": float("nan"), "c": 0.5}, {"b": 0.9, "c": 0.6}) == ["c"]
    assert M.oracle_pick({}, {}) == [] and M.oracle_topk_test({}, {}) is None and M.upper_bound({}) is None


def test_paired_bootstrap_recomputed_with_the_same_draws():
    diffs = [1.5, -0.5, 2.0, 0.25, 3.0, -1.0, 0.75, 1.1, -0.3, 0.6, 2.7, -0.9]
    out = M.paired_bootstrap(diffs, n_boot=1000, seed=7, level=0.9)
    d = np.array(diffs)
    idx = np.random.default_rng(7).integers(0, len(d), size=(1000, len(d)))
    means = np.sort(d[idx].mean(axis=1))
    # 'linear' by hand: position q * (n_boot - 1) = 49.95 and 949.05, between two sorted means
    lo_hand = means[49] + 0.95 * (means[50] - means[49])
    hi_hand = means[949] + 0.05 * (means[950] - means[949])
    assert means[50] > means[49] and means[950] > means[949]          # the interpolation matters
    assert out["low"] == pytest.approx(lo_hand, abs=1e-12)
    assert out["high"] == pytest.approx(hi_hand, abs=1e-12)
    assert out["mean"] == pytest.approx(d.mean())
    assert out["low"] < out["mean"] < out["high"]
    assert (out["n"], out["level"], out["n_boot"]) == (12, 0.9, 1000)
    assert M.paired_bootstrap(diffs, n_boot=1000, seed=7, level=0.9) == out     # deterministic
    assert M.paired_bootstrap(diffs, n_boot=1000, seed=8, level=0.9)["low"] != out["low"]
    wider = M.paired_bootstrap(diffs, n_boot=1000, seed=7, level=0.99)
    assert wider["low"] < out["low"] and wider["high"] > out["high"]


def test_paired_bootstrap_by_hand():
    same = M.paired_bootstrap([0.3, 0.3, 0.3, 0.3], n_boot=500)
    assert same["low"] == pytest.approx(0.3) and same["high"] == pytest.approx(0.3)
    assert same["mean"] == pytest.approx(0.3)
    # [0, 1]: the exact bootstrap means are 0 (1/4), 0.5 (1/2), 1 (1/4)
    wide = M.paired_bootstrap([0.0, 1.0], n_boot=40000, level=0.95)     # quantiles .025, .975
    assert (wide["low"], wide["high"]) == (pytest.approx(0.0), pytest.approx(1.0))
    mid = M.paired_bootstrap([0.0, 1.0], n_boot=40000, level=0.4)       # quantiles .3, .7
    assert (mid["low"], mid["high"]) == (pytest.approx(0.5), pytest.approx(0.5))
    # [0, 0, 3]: the mean is the count of 3s drawn, Binomial(3, 1/3): P = 8/27, 12/27, 6/27, 1/27
    tri = M.paired_bootstrap([0.0, 0.0, 3.0], n_boot=40000, level=0.2)  # quantiles .4, .6 -> both 1
    assert (tri["low"], tri["high"]) == (pytest.approx(1.0), pytest.approx(1.0))
    tri95 = M.paired_bootstrap([0.0, 0.0, 3.0], n_boot=40000, level=0.95)  # .025 -> 0, .975 -> 3
    assert (tri95["low"], tri95["high"]) == (pytest.approx(0.0), pytest.approx(3.0))
    one = M.paired_bootstrap([2.5])
    assert one["low"] == one["high"] == one["mean"] == 2.5 and one["n"] == 1
    none = M.paired_bootstrap([])
    assert none["mean"] is None and none["low"] is None and none["high"] is None and none["n"] == 0


def test_mean_spread_by_hand():
    s = M.mean_spread([0.8, 0.9, 1.0])
    assert s["mean"] == pytest.approx(0.9) and s["std"] == pytest.approx(0.1)      # sample std, ddof=1
    assert s["n"] == 3 and s["values"] == [0.8, 0.9, 1.0]
    assert M.mean_spread([0.7]) == {"mean": 0.7, "std": 0.0, "n": 1, "values": [0.7]}
    assert M.mean_spread([])["mean"] is None


# ----------------------------------------------------------------------------- floors

def _dark_bright(n_per, rng, gray=False, size=8):
    """Class 0: pixels in [0, 100]; class 1: pixels in [155, 255]; shuffled."""
    ch = 1 if gray else 3
    dark = rng.integers(0, 101, size=(n_per, size, size, ch))
    bright = rng.integers(155, 256, size=(n_per, size, size, ch))
    x = np.concatenate([dark, bright]).astype(np.uint8)
    if gray:
        x = np.repeat(x, 3, axis=-1)
    y = np.array([0] * n_per + [1] * n_per)
    p = rng.permutation(len(y))
    return x[p], y[p]


def test_logreg_pixels_separates_dark_from_bright_in_native_channels():
    rng = np.random.default_rng(0)
    xtr, ytr = _dark_bright(40, rng)
    xte, yte = _dark_bright(20, rng)
    rgb = F.logreg_pixels(xtr, ytr, xte, yte)
    assert rgb["test_accuracy"] == 1.0
    assert rgb["features"] == 8 * 8 * 3 and rgb["n_train"] == 80 and rgb["seconds"] >= 0.0
    gxtr, gytr = _dark_bright(40, rng, gray=True)
    gxte, gyte = _dark_bright(20, rng, gray=True)
    gray = F.logreg_pixels(gxtr, gytr, gxte, gyte)
    assert gray["test_accuracy"] == 1.0
    assert gray["features"] == rgb["features"] // 3 == 64    # gray stored as 3 channels: one is used
    flipped = F.logreg_pixels(xtr, ytr, xte, 1 - yte)        # wrong labels must score 0, not 1
    assert flipped["test_accuracy"] == 0.0


def test_linear_probe_on_separable_and_on_noise_features():
    rng = np.random.default_rng(1)

    def separable(n):
        y = rng.permutation(np.repeat([0, 1], n // 2))
        f = rng.normal(size=(n, 6))
        f[:, 2] += np.where(y == 1, 4.0, -4.0)
        return f, y

    ftr, ytr = separable(100)
    fte, yte = separable(200)
    sep = F.linear_probe(ftr, ytr, fte, yte)
    assert sep["test_accuracy"] == 1.0 and sep["features"] == 6 and sep["n_train"] == 100
    noise = F.linear_probe(rng.normal(size=(200, 20)), np.repeat([0, 1], 100),
                           rng.normal(size=(1000, 20)), rng.permutation(np.repeat([0, 1], 500)))
    assert 0.4 < noise["test_accuracy"] < 0.6


def test_a_single_class_training_set_scores_the_majority_class():
    rng = np.random.default_rng(2)
    out = F.linear_probe(rng.normal(size=(10, 4)), np.ones(10, int), rng.normal(size=(5, 4)),
                         np.array([1, 1, 0, 0, 1]))
    assert out["test_accuracy"] == pytest.approx(0.6) and out["n_train"] == 10 and out["features"] == 4
    img = F.logreg_pixels(rng.integers(0, 256, size=(6, 4, 4, 3)).astype(np.uint8), np.full(6, 3),
                          rng.integers(0, 256, size=(4, 4, 4, 3)).astype(np.uint8), np.array([3, 0, 1, 2]))
    assert img["test_accuracy"] == pytest.approx(0.25)


def _pid(job):  # module level: the spawned workers import it by name
    import os

    return os.getpid(), job


def test_one_shared_pool_serves_every_map_inside_it_and_a_fresh_one_outside():
    """`tans bench` runs two maps a (dataset, seed); inside ``shared_pool`` they reuse the same spawned
    processes (no torch import again each time) and keep the jobs' order; outside it every map starts its own."""
    from tans_registry.executor import parallel_map, shared_pool

    with shared_pool(2):
        first = list(parallel_map(_pid, list(range(6)), 2))
        second = list(parallel_map(_pid, list(range(6)), 2))
    assert [j for _, j in first] == list(range(6)) == [j for _, j in second]
    inside = {p for p, _ in first} | {p for p, _ in second}
    assert 1 <= len(inside) <= 2  # two maps, at most the pool's two processes
    outside = {p for p, _ in parallel_map(_pid, list(range(4)), 2)}
    assert outside.isdisjoint(inside)
