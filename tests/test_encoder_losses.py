"""Losses and meta-validation metrics of the encoders, checked against values computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tans_registry.encoders.losses import hinge_loss, info_nce_loss, positive_weights, predictor_loss
from tans_registry.validation.metrics import (
    mean_weighted_tau,
    predictor_errors,
    ranks,
    recall_at_k,
    retrieval_report,
    weighted_tau,
)

# The 2x2 configuration used throughout (all rows unit length):
#   q0 = (1, 0), q1 = (0, 1);  m0 = (1, 0), m1 = (0.8, 0.6)
#   S = q @ m.T:  S[0,0] = 1, S[0,1] = 0.8, S[1,0] = 0, S[1,1] = 0.6
Q2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
M2 = torch.tensor([[1.0, 0.0], [0.8, 0.6]])


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


# ---------------------------------------------------------------- hinge


def test_hinge_perfect_separation_is_zero():
    # q = m = I: S = I, every negative scores 0, positive 1: max(0, 0.2 - 1 + 0) = 0 everywhere
    eye = torch.eye(3)
    assert hinge_loss(eye, eye, margin=0.2).item() == 0.0


def test_hinge_margin_larger_than_gap():
    # q = m = I3, margin 1.5: every term max(0, 1.5 - 1 + 0) = 0.5;
    # row i: 2 negatives x 2 directions x 0.5 = 2.0; mean over rows = 2.0 (the reference's sum: 6.0)
    eye = torch.eye(3)
    assert hinge_loss(eye, eye, margin=1.5).item() == pytest.approx(2.0)
    # margin exactly 1: max(0, 1 - 1 + 0) = 0
    assert hinge_loss(eye, eye, margin=1.0).item() == pytest.approx(0.0)


def test_hinge_collapsed_embeddings():
    # all rows identical: S = all ones, each term = margin; row = 2 (B - 1) margin = 2 * 2 * 0.2 = 0.8
    v = torch.ones(3, 4) / 2.0
    assert hinge_loss(v, v, margin=0.2).item() == pytest.approx(0.8)


def test_hinge_known_configuration_and_directions():
    # margin 0.5, S = [[1, 0.8], [0, 0.6]]
    # row 0, query 0 -> model 1:  max(0, 0.5 - S00 + S01) = max(0, 0.5 - 1 + 0.8) = 0.3
    # row 0, model 0 -> query 1:  max(0, 0.5 - S00 + S10) = max(0, 0.5 - 1 + 0)   = 0
    # row 1, query 1 -> model 0:  max(0, 0.5 - S11 + S10) = max(0, 0.5 - 0.6 + 0) = 0
    # row 1, model 1 -> query 0:  max(0, 0.5 - S11 + S01) = max(0, 0.5 - 0.6 + 0.8) = 0.7
    # loss = mean(0.3, 0.7) = 0.5
    assert hinge_loss(Q2, M2, margin=0.5).item() == pytest.approx(0.5)
    # the weights isolate each row's term: row 0 holds only the query->model violation (0.3),
    # row 1 only the model->query one (0.7), which reads S[0, 1] down the column of model 1
    assert hinge_loss(Q2, M2, margin=0.5, weights=torch.tensor([1.0, 0.0])).item() == pytest.approx(0.3)
    assert hinge_loss(Q2, M2, margin=0.5, weights=torch.tensor([0.0, 1.0])).item() == pytest.approx(0.7)
    # weighted mean: (1 * 0.3 + 3 * 0.7) / 4 = 0.6
    assert hinge_loss(Q2, M2, margin=0.5, weights=torch.tensor([1.0, 3.0])).item() == pytest.approx(0.6)
    # margin 0.2: 0.2 - 1 + 0.8 = 0 and 0.2 - 0.6 + 0.8 = 0.4 -> mean(0, 0.4) = 0.2
    assert hinge_loss(Q2, M2, margin=0.2).item() == pytest.approx(0.2)


def test_hinge_is_symmetric_in_q_and_m():
    # swapping q and m transposes S, which swaps the two directions row by row
    g = torch.Generator().manual_seed(0)
    q, m = _unit(torch.randn(5, 3, generator=g)), _unit(torch.randn(5, 3, generator=g))
    assert hinge_loss(q, m).item() == pytest.approx(hinge_loss(m, q).item())


def test_hinge_matches_explicit_loops():
    g = torch.Generator().manual_seed(1)
    q, m = _unit(torch.randn(4, 6, generator=g)), _unit(torch.randn(4, 6, generator=g))
    s = (q @ m.T).tolist()
    total = 0.0
    for i in range(4):
        for j in range(4):
            if j != i:
                total += max(0.0, 0.3 - s[i][i] + s[i][j]) + max(0.0, 0.3 - s[i][i] + s[j][i])
    assert hinge_loss(q, m, margin=0.3).item() == pytest.approx(total / 4, rel=1e-5)


# ---------------------------------------------------------------- InfoNCE


def _manual_ce(logits: list[list[float]], target: int, row: bool) -> float:
    """-log softmax of the target entry, along a row (row=True) or down a column."""
    vals = logits[target] if row else [r[target] for r in logits]
    return -(vals[target] - math.log(sum(math.exp(v) for v in vals)))


def test_info_nce_2x2_by_hand():
    # temperature 0.5: logits = S / 0.5 = [[2, 1.6], [0, 1.2]]
    # rows:    -2 + log(e^2 + e^1.6),   -1.2 + log(e^0 + e^1.2)
    # columns: -2 + log(e^2 + e^0),     -1.2 + log(e^1.6 + e^1.2)
    rows = [-2 + math.log(math.exp(2) + math.exp(1.6)), -1.2 + math.log(1 + math.exp(1.2))]
    cols = [-2 + math.log(math.exp(2) + 1), -1.2 + math.log(math.exp(1.6) + math.exp(1.2))]
    expected = 0.5 * (sum(rows) / 2 + sum(cols) / 2)
    assert info_nce_loss(Q2, M2, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)
    # weights [1, 3]: each direction's weighted mean
    expected_w = 0.5 * ((rows[0] + 3 * rows[1]) / 4 + (cols[0] + 3 * cols[1]) / 4)
    got = info_nce_loss(Q2, M2, temperature=0.5, weights=torch.tensor([1.0, 3.0])).item()
    assert got == pytest.approx(expected_w, rel=1e-6)


def test_info_nce_3x3_against_manual_log_softmax():
    g = torch.Generator().manual_seed(2)
    q, m = _unit(torch.randn(3, 4, generator=g)), _unit(torch.randn(3, 4, generator=g))
    t = 0.1
    logits = ((q @ m.T) / t).tolist()
    rows = [_manual_ce(logits, i, row=True) for i in range(3)]
    cols = [_manual_ce(logits, i, row=False) for i in range(3)]
    expected = 0.5 * (sum(rows) / 3 + sum(cols) / 3)
    assert info_nce_loss(q, m, temperature=t).item() == pytest.approx(expected, rel=1e-5)


def test_info_nce_perfect_alignment_low_temperature_is_near_zero():
    # S = I, t = 0.01: each CE = log(1 + 2 e^-100) ~ 0
    eye = torch.eye(3)
    assert info_nce_loss(eye, eye, temperature=0.01).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize("loss", [hinge_loss, info_nce_loss])
def test_uniform_or_scaled_weights_change_nothing(loss):
    g = torch.Generator().manual_seed(3)
    q, m = _unit(torch.randn(4, 3, generator=g)), _unit(torch.randn(4, 3, generator=g))
    plain = loss(q, m).item()
    assert loss(q, m, weights=torch.ones(4)).item() == pytest.approx(plain, rel=1e-6)
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    assert loss(q, m, weights=w).item() == pytest.approx(loss(q, m, weights=7 * w).item(), rel=1e-6)


def test_positive_weights():
    acc = torch.tensor([0.5, 0.9, 0.7])
    assert torch.equal(positive_weights(acc), torch.ones(3))  # sharpness 0: plain mean
    w = positive_weights(acc, sharpness=10.0)
    # exp(10 * (acc - 0.9)) = exp(-4), exp(0), exp(-2)
    assert w.tolist() == pytest.approx([math.exp(-4), 1.0, math.exp(-2)], rel=1e-6)
    # ratios do not depend on the batch maximum: exp(10 * (0.7 - 0.5)) = e^2
    assert (w[2] / w[0]).item() == pytest.approx(math.exp(2), rel=1e-5)
    assert positive_weights(torch.tensor([0.0, 0.0]), sharpness=5.0).tolist() == [1.0, 1.0]
    assert not positive_weights(acc.requires_grad_(), sharpness=1.0).requires_grad
    with pytest.raises(ValueError, match="sharpness"):
        positive_weights(acc, sharpness=-1.0)
    with pytest.raises(ValueError, match="finite"):
        positive_weights(torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError, match="1-D"):
        positive_weights(torch.ones(2, 2))


# ---------------------------------------------------------------- predictor


def test_predictor_loss():
    # (0.5^2 + 1^2) / 2 = 0.625;  weights [1, 3]: (0.25 + 3 * 1) / 4 = 0.8125
    pred, target = torch.tensor([0.5, 1.0]), torch.tensor([0.0, 0.0])
    assert predictor_loss(pred, target).item() == pytest.approx(0.625)
    assert predictor_loss(pred, target, weights=torch.tensor([1.0, 3.0])).item() == pytest.approx(0.8125)
    # a [B, 1] head output is read as [B], not broadcast against [B] to [B, B]:
    # target [0, 1]: row-wise ((0.5 - 0)^2 + (1 - 1)^2) / 2 = 0.125; broadcast would give
    # (0.5^2 + 0.5^2 + 1^2 + 0^2) / 4 = 0.375
    assert predictor_loss(pred[:, None], torch.tensor([0.0, 1.0])).item() == pytest.approx(0.125)
    with pytest.raises(ValueError, match="same length"):
        predictor_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\[B\] or \[B, 1\]"):
        predictor_loss(torch.zeros(2, 3), torch.zeros(2, 3))


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("loss", [hinge_loss, info_nce_loss])
def test_gradients_flow(loss):
    g = torch.Generator().manual_seed(4)
    raw_q = torch.randn(4, 5, generator=g, requires_grad=True)
    raw_m = torch.randn(4, 5, generator=g, requires_grad=True)
    # margin 1.0 keeps the hinge active on random embeddings, so gradients are non-zero
    kwargs = {"margin": 1.0} if loss is hinge_loss else {}
    value = loss(_unit(raw_q), _unit(raw_m), **kwargs)
    value.backward()
    for grad in (raw_q.grad, raw_m.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_predictor_gradient_flows():
    pred = torch.tensor([0.2, 0.4], requires_grad=True)
    predictor_loss(pred, torch.tensor([0.5, 0.5])).backward()
    # d/dp mean((p - t)^2) = (p - t) = [-0.3, -0.1]
    assert pred.grad.tolist() == pytest.approx([-0.3, -0.1])


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("loss", [hinge_loss, info_nce_loss])
def test_input_validation(loss):
    with pytest.raises(ValueError, match="2-D"):
        loss(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.ones(3, 2), torch.ones(3, 4))
    with pytest.raises(ValueError, match="B >= 2"):
        loss(torch.ones(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="shape"):
        loss(Q2, M2, weights=torch.ones(3))
    with pytest.raises(ValueError, match=">= 0"):
        loss(Q2, M2, weights=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="all be zero"):
        loss(Q2, M2, weights=torch.zeros(2))


def test_hyperparameter_validation():
    with pytest.raises(ValueError, match="margin"):
        hinge_loss(Q2, M2, margin=-0.1)
    hinge_loss(Q2, M2, margin=0.0)  # zero margin is allowed
    for t in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            info_nce_loss(Q2, M2, temperature=t)


# ---------------------------------------------------------------- retrieval metrics

# 4 queries x 4 items
SCORES = np.array([
    [0.9, 0.5, 0.5, 0.1],  # positive {0}: nothing scores above 0.9 -> rank 1
    [0.2, 0.2, 0.2, 0.9],  # positive {1}: 0.9 strictly above, two negatives tied at 0.2 (half each) -> rank 3
    [0.3, 0.8, 0.1, 0.8],  # positives {0, 2}: best positive 0.3; 0.8, 0.8 above -> rank 3
    [0.1, 0.2, 0.3, 0.4],  # positive {0}: 0.2, 0.3, 0.4 above -> rank 4
])
POSITIVES = [{0}, {1}, {0, 2}, {0}]


def test_ranks_with_ties_and_multiple_positives():
    assert ranks(SCORES, POSITIVES).tolist() == [1, 3, 3, 4]
    # a tied negative counts half (the expected rank under a random tie-break): row 1 with positive {0} is 3
    assert ranks(SCORES[1:2], [{0}]).tolist() == [3]
    # all scores equal: the middle, not the top (collapsed embeddings must not look perfect)
    assert ranks(np.zeros((2, 3)), [{1}, {2}]).tolist() == [2, 2]
    # a tie between two positives costs nothing
    assert ranks(np.array([[0.5, 0.5, 0.1]]), [{0, 1}]).tolist() == [1]


def test_ranks_accepts_index_array_and_mask():
    single = [{0}, {1}, {2}, {0}]
    expected = ranks(SCORES, single).tolist()  # row 2, positive 2 (0.1): 3 items above -> rank 4
    assert expected == [1, 3, 4, 4]
    assert ranks(SCORES, np.array([0, 1, 2, 0])).tolist() == expected
    mask = np.zeros((4, 4), dtype=bool)
    for i, items in enumerate(POSITIVES):
        mask[i, list(items)] = True
    assert ranks(SCORES, mask).tolist() == [1, 3, 3, 4]


def test_ranks_validation():
    with pytest.raises(ValueError, match="without any positive"):
        ranks(SCORES, [{0}, set(), {1}, {2}])
    with pytest.raises(ValueError, match="outside"):
        ranks(SCORES, [{0}, {4}, {1}, {2}])
    with pytest.raises(ValueError, match="entries"):
        ranks(SCORES, [{0}])
    with pytest.raises(ValueError, match="finite"):
        ranks(np.array([[np.nan, 1.0]]), [{0}])
    with pytest.raises(ValueError, match="2-D"):
        ranks(np.zeros(3), [{0}])


def test_recall_and_report():
    r = np.array([1, 2, 3, 4])
    assert recall_at_k(r, 1) == 0.25
    assert recall_at_k(r, 3) == 0.75
    assert recall_at_k(r, 10) == 1.0
    with pytest.raises(ValueError):
        recall_at_k(r, 0)
    with pytest.raises(ValueError):
        recall_at_k(np.array([], dtype=int), 1)
    # ranks [1, 3, 3, 4]: mean 11/4, median 3
    assert retrieval_report(SCORES, POSITIVES) == {
        "recall@1": 0.25, "recall@5": 1.0, "recall@10": 1.0, "mean_rank": 2.75, "median_rank": 3.0,
    }
    # single positives [1, 3, 4, 4]: mean 3, median (3 + 4) / 2 = 3.5; recall@2 = 0.25
    report = retrieval_report(SCORES, np.array([0, 1, 2, 0]), ks=(2,))
    assert report == {"recall@2": 0.25, "mean_rank": 3.0, "median_rank": 3.5}


# ---------------------------------------------------------------- weighted tau


def test_weighted_tau_orderings():
    measured = [0.61, 0.72, 0.55, 0.90, 0.80]
    assert weighted_tau(measured, measured) == pytest.approx(1.0)
    assert weighted_tau(np.exp(measured), measured) == pytest.approx(1.0)  # only the order matters
    assert weighted_tau([-a for a in measured], measured) == pytest.approx(-1.0)
    # rank=True (scipy's default) averages both rankings: the argument order does not matter
    pred = [0.3, 0.1, 0.2, 0.5, 0.4]
    assert weighted_tau(pred, measured) == pytest.approx(weighted_tau(measured, pred))


def test_weighted_tau_weighs_the_top_more():
    measured = [1.0, 2.0, 3.0, 4.0, 5.0]
    swap_top = [1.0, 2.0, 3.0, 5.0, 4.0]     # the two best candidates exchanged
    swap_bottom = [2.0, 1.0, 3.0, 4.0, 5.0]  # the two worst exchanged
    assert weighted_tau(swap_top, measured) < weighted_tau(swap_bottom, measured) < 1.0


def test_weighted_tau_nan_cases_and_mean():
    assert math.isnan(weighted_tau([0.5], [0.7]))        # fewer than 2 candidates
    assert math.isnan(weighted_tau([], []))
    assert math.isnan(weighted_tau([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]))  # constant prediction
    assert math.isnan(weighted_tau([0.1, 0.2, 0.3], [0.5, 0.5, 0.5]))  # constant accuracy
    with pytest.raises(ValueError, match="same length"):
        weighted_tau([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        weighted_tau([1.0, np.nan], [1.0, 2.0])
    up = [1.0, 2.0, 3.0]
    groups = [(up, up), ([1.0], [1.0]), (up[::-1], up), ([2.0, 2.0], [1.0, 3.0])]
    assert mean_weighted_tau(groups) == pytest.approx(0.0)  # mean(1, -1); the two nans are ignored
    assert math.isnan(mean_weighted_tau([([1.0], [1.0])]))
    assert math.isnan(mean_weighted_tau([]))


# ---------------------------------------------------------------- predictor errors


def test_predictor_errors():
    # errors [0, 1, -2]: mae (0 + 1 + 2) / 3 = 1, rmse sqrt((0 + 1 + 4) / 3) = sqrt(5/3)
    out = predictor_errors([1.0, 2.0, -1.0], [1.0, 1.0, 1.0])
    assert out["mae"] == pytest.approx(1.0)
    assert out["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert predictor_errors(np.array([[0.5], [0.5]]), [0.5, 0.5]) == {"mae": 0.0, "rmse": 0.0}
    with pytest.raises(ValueError):
        predictor_errors([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        predictor_errors([], [])


# ------------------------------------------------------------------------------ pairwise ranking
def test_pairwise_rank_loss_hand_computed():
    from tans_registry.encoders.losses import pairwise_rank_loss

    pa, pb = torch.tensor([0.6, 0.5, 0.3]), torch.tensor([0.5, 0.7, 0.3])
    aa, ab = torch.tensor([0.9, 0.8, 0.4]), torch.tensor([0.7, 0.4, 0.4])
    # pair 0: right order (w .2, margin +.1); pair 1: wrong order (w .4, margin -.2); pair 2: tied (w 0)
    expected = (0.2 * math.log1p(math.exp(-20 * 0.1)) + 0.4 * math.log1p(math.exp(20 * 0.2))) / 0.6
    assert float(pairwise_rank_loss(pa, pb, aa, ab)) == pytest.approx(expected, rel=1e-5)
    # symmetric in the pair order; 0 when every pair ties
    assert float(pairwise_rank_loss(pb, pa, ab, aa)) == pytest.approx(expected, rel=1e-5)
    assert float(pairwise_rank_loss(pa, pb, aa, aa)) == 0.0
    with pytest.raises(ValueError, match="same length"):
        pairwise_rank_loss(pa, pb[:2], aa, ab)
