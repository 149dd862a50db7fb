"""LEEP and NCE from their definitions, and the hybrid policy's shortlist (numpy only)."""
from __future__ import annotations

import numpy as np
import pytest

from tans_registry.retrieval.transferability import hybrid_shortlist, leep, nce


def test_leep_and_nce_rank_an_informative_source_head_above_an_uninformative_one():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 50)
    informative = np.full((200, 6), 0.02)
    informative[np.arange(200), y] = 0.90         # the source class z = the query class, with noise
    informative /= informative.sum(1, keepdims=True)
    noise = rng.dirichlet(np.ones(6), size=200)
    assert leep(informative, y) > leep(noise, y)
    assert nce(informative.argmax(1), y) > nce(noise.argmax(1), y)
    # bounds: NCE is -H(Y|Z), 0 for a perfect predictor and -log(4) at worst; LEEP <= 0
    assert nce(y, y) == pytest.approx(0.0) and nce(np.zeros(200, int), y) == pytest.approx(-np.log(4))
    assert leep(informative, y) <= 0.0


def test_leep_matches_its_definition_on_a_small_case():
    theta = np.array([[0.8, 0.2], [0.6, 0.4], [0.1, 0.9]])
    y = np.array([0, 0, 1])
    joint = np.array([[0.8 + 0.6, 0.2 + 0.4], [0.1, 0.9]]) / 3      # P(y, z)
    cond = joint / joint.sum(0)                                        # P(y | z)
    expected = np.mean(np.log([theta[i] @ cond[y[i]] for i in range(3)]))
    assert leep(theta, y) == pytest.approx(expected)


def test_hybrid_shortlist_spans_groups_keeps_order_and_the_generalist():
    rows = list(range(100, 130))
    groups = ["a"] * 20 + ["b"] * 5 + ["c"] * 3 + ["gen"] * 2
    short = hybrid_shortlist(rows, groups, k=9, min_groups=3)
    assert len(short) == 9 and short == sorted(short)  # ranking order kept
    picked = [groups[rows.index(r)] for r in short]
    assert picked.count("a") == 3 and len(set(picked)) >= 3  # a capped at ceil(9 / 3)
    with_gen = hybrid_shortlist(rows, groups, k=9, min_groups=3, must_include=[128])
    assert 128 in with_gen and len(with_gen) == 9
    assert {groups[rows.index(r)] for r in with_gen} >= {"a", "b", "c", "gen"}  # no group's only place given up
    # the only place of the third group is last: another group's place makes room for the generalist
    rows2, groups2 = list(range(10)), ["a"] * 4 + ["b"] * 4 + ["c", "gen"]
    assert hybrid_shortlist(rows2, groups2, k=5, min_groups=3) == [0, 1, 4, 5, 8]
    assert hybrid_shortlist(rows2, groups2, k=5, min_groups=3, must_include=[9]) == [0, 1, 4, 8, 9]
    # fewer groups than asked: the places left go down the ranking
    assert hybrid_shortlist(rows[:10], ["a"] * 10, k=5, min_groups=3) == rows[:5]
    assert hybrid_shortlist(rows, groups, k=0, min_groups=3) == []


def test_a_shortlist_option_is_refused_where_nothing_uses_it():
    from tans_registry.errors import ParamError
    from tans_registry.retrieval.config import RankConfig

    for rerank in ("none", "hybrid"):
        for name in ("shortlist", "rerank_groups"):
            with pytest.raises(ParamError, match=f"--{name.replace('_', '-')}.*left out with --rerank {rerank}"):
                RankConfig(data="digits", rerank=rerank, **{name: 5})
    assert RankConfig(data="digits", rerank="predictor", shortlist=5, rerank_groups=2).shortlist == 5
    assert RankConfig(data="digits", rerank="logme", shortlist=5).shortlist == 5
