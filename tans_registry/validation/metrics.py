"""Meta-validation metrics: retrieval ranks and recall, weighted Kendall tau, predictor errors.

Retrieval (the reference's training metrics): each query dataset scores every item (network) of the
zoo; a query's *rank* is the 1-based position of its best-ranked positive network. Recall@k is the
fraction of queries whose rank is <= k.

Model ranking (the transferability literature's metric): weighted Kendall tau between the scores a
method predicts for the candidate networks and their measured (fine-tuned) accuracies.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats

__all__ = ["ranks", "recall_at_k", "retrieval_report", "weighted_tau", "mean_weighted_tau", "predictor_errors"]


def _positive_mask(positives, n_queries: int, n_items: int) -> np.ndarray:
    """``positives`` as a boolean ``[n_queries, n_items]`` mask, validated."""
    if isinstance(positives, np.ndarray) and positives.dtype != object:
        if positives.dtype == bool:
            if positives.shape != (n_queries, n_items):
                raise ValueError(f"a boolean positives mask must have shape {(n_queries, n_items)}; "
                                 f"got {positives.shape}")
            mask = positives.copy()
        elif positives.ndim == 1 and np.issubdtype(positives.dtype, np.integer):
            if positives.shape[0] != n_queries:
                raise ValueError(f"positives has {positives.shape[0]} entries for {n_queries} queries")
            if positives.size and (positives.min() < 0 or positives.max() >= n_items):
                raise ValueError(f"positive item indices must lie in [0, {n_items})")
            mask = np.zeros((n_queries, n_items), dtype=bool)
            mask[np.arange(n_queries), positives] = True
        else:
            raise ValueError("positives as an array must be a 1-D integer array (one positive item per query) "
                             f"or a boolean [n_queries, n_items] mask; got dtype {positives.dtype}, "
                             f"shape {positives.shape}")
    else:
        positives = list(positives)
        if len(positives) != n_queries:
            raise ValueError(f"positives has {len(positives)} entries for {n_queries} queries")
        mask = np.zeros((n_queries, n_items), dtype=bool)
        for i, items in enumerate(positives):
            for j in items:
                j = int(j)
                if not 0 <= j < n_items:
                    raise ValueError(f"query {i}: positive item index {j} is outside [0, {n_items})")
                mask[i, j] = True
    empty = np.flatnonzero(~mask.any(axis=1))
    if empty.size:
        raise ValueError(f"queries without any positive item: {empty[:10].tolist()}")
    return mask


def ranks(scores: np.ndarray, positives: Sequence[Iterable[int]] | np.ndarray) -> np.ndarray:
    """For each query, the 1-based rank of its best-ranked positive item (higher score = better).

    ``scores`` is ``[n_queries, n_items]``. ``positives`` is one of: a list (one entry per query) of sets
    of item indices; a 1-D integer array (the one positive item of each query); a boolean
    ``[n_queries, n_items]`` mask. Every query needs at least one positive.

    Ties count half: rank = 1 + (negatives scoring strictly higher than the best positive) + (negatives
    scoring exactly the same) / 2, the expected rank under a random tie-break. Degenerate scores (all
    equal, e.g. collapsed embeddings, or model embeddings that only see a topology every group shares)
    then rank near the middle, not first. Returns a ``float64`` array ``[n_queries]``.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D [n_queries, n_items]; got shape {s.shape}")
    if s.shape[1] == 0:
        raise ValueError("scores has no items")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    mask = _positive_mask(positives, *s.shape)
    best_positive = np.where(mask, s, -np.inf).max(axis=1)[:, None]
    higher = (s > best_positive).sum(axis=1)
    tied_negatives = ((s == best_positive) & ~mask).sum(axis=1)
    return 1.0 + higher + 0.5 * tied_negatives


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Fraction of queries whose rank is <= ``k`` (``k >= 1``; at least one query)."""
    r = np.asarray(ranks)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array; got shape {r.shape}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1; got {k}")
    return float(np.mean(r <= k))


def retrieval_report(scores: np.ndarray, positives, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """``{"recall@k": ... for k in ks, "mean_rank": ..., "median_rank": ...}`` (ranks as in :func:`ranks`)."""
    r = ranks(scores, positives)
    report = {f"recall@{int(k)}": recall_at_k(r, k) for k in ks}
    report["mean_rank"] = float(np.mean(r))
    report["median_rank"] = float(np.median(r))
    return report


def _vector(x, name: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {v.shape}")
    return v


def weighted_tau(predicted, measured) -> float:
    """Weighted Kendall tau between predicted scores and measured accuracies of the same candidates.

    Computed as ``scipy.stats.weightedtau(measured, predicted)`` with scipy's defaults (``rank=True``,
    hyperbolic weigher ``1 / (r + 1)``, additive). Weighted tau counts a disagreement (an exchanged
    pair) by the importance of the two elements, and importance is the position in a *decreasing*
    ranking: disagreements among the highest values (the best networks) weigh most; swapping the two
    best candidates costs more than swapping the two worst.

    Choice of ``rank``: scipy ranks elements by the first argument (``rank=None``, ties broken by the
    second) or, with the default ``rank=True`` used here, averages that with the ranking by the second
    argument. We keep the default so that the value is (a) symmetric, hence immune to an argument-order
    slip, and (b) computed the way the model-ranking literature's published numbers are understood to
    be (scipy's defaults). The argument order ``(measured, predicted)`` is the one that would make
    ``measured`` the importance ranking if ``rank=None`` were ever chosen.

    Returns nan when there are fewer than 2 candidates or either input is constant (no ordering to
    compare). Raises ``ValueError`` for mismatched lengths or non-finite values (a nan score is a bug
    upstream, not a missing value to skip).
    """
    p = _vector(predicted, "predicted")
    a = _vector(measured, "measured")
    if p.shape != a.shape:
        raise ValueError(f"predicted and measured must have the same length; got {p.size} and {a.size}")
    if not (np.isfinite(p).all() and np.isfinite(a).all()):
        raise ValueError("predicted and measured must be finite")
    if p.size < 2 or np.ptp(p) == 0 or np.ptp(a) == 0:
        return float("nan")
    return float(stats.weightedtau(a, p).statistic)


def mean_weighted_tau(groups: Iterable[tuple[object, object]]) -> float:
    """Mean of :func:`weighted_tau` over ``(predicted, measured)`` groups (e.g. one per held-out dataset),
    ignoring groups whose tau is nan; nan when no group has a tau."""
    taus = [weighted_tau(pred, meas) for pred, meas in groups]
    finite = [t for t in taus if not np.isnan(t)]
    return float(np.mean(finite)) if finite else float("nan")


def mean_regret(groups: Iterable[tuple[object, object]]) -> float:
    """Mean over ``(predicted, measured)`` groups of the points of measured accuracy lost by taking the
    network predicted best instead of the best one: 100 * (max(measured) - measured[argmax(predicted)])."""
    out = [100.0 * (float(np.max(meas)) - float(np.asarray(meas)[int(np.argmax(pred))]))
           for pred, meas in groups if len(meas)]
    return float(np.mean(out)) if out else float("nan")


def _column(x, name: str) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim == 2 and v.shape[1] == 1:  # a predictor head's [B, 1]
        v = v[:, 0]
    if v.ndim != 1:
        raise ValueError(f"{name} must have shape [B] or [B, 1]; got {v.shape}")
    return v


def predictor_errors(pred, target) -> dict[str, float]:
    """``{"mae": mean |pred - target|, "rmse": sqrt(mean (pred - target)^2)}``.

    ``pred`` and ``target`` are ``[B]`` or ``[B, 1]`` (same ``B >= 1``), as in
    :func:`tans_registry.encoders.losses.predictor_loss`.
    """
    p = _column(pred, "pred")
    t = _column(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same length; got {p.size} and {t.size}")
    if p.size == 0:
        raise ValueError("predictor_errors needs at least one value")
    err = p - t
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2)))}
