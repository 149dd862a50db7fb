"""The one re-ranking policy (TANS's retrieve-then-rank), called by meta-validation and by `tans query`.

Retrieval scores every network; the best ``shortlist`` are kept; the predictor orders those of the first
``rerank_groups`` groups among them in retrieval order (0: the whole shortlist) by predicted accuracy,
and they go first; every other network follows in retrieval order. Both values are stored with the
encoders (``EncoderConfig.shortlist``, ``EncoderConfig.rerank_groups``), so a query re-ranks the way the
champion was validated, unless told otherwise.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..registry.index import top_k


@dataclass(frozen=True)
class RerankPolicy:
    """The policy's two settings; their defaults live in ``EncoderConfig`` (use :meth:`of`)."""

    shortlist: int         # networks retrieved for re-ranking
    groups: int            # ... of the first N groups among them (0: all)

    @classmethod
    def of(cls, enc_cfg, shortlist: int | None = None, groups: int | None = None) -> "RerankPolicy":
        """The encoders' policy, with a query's overrides (None: the encoders' value)."""
        return cls(shortlist=int(enc_cfg.shortlist if shortlist is None else shortlist),
                   groups=int(enc_cfg.rerank_groups if groups is None else groups))


def first_groups(owners_in_order, n: int) -> list:
    """The first ``n`` distinct values of ``owners_in_order`` (the groups of networks in retrieval order)."""
    seen: list = []
    for g in owners_in_order:
        if g not in seen:
            seen.append(g)
            if len(seen) == n:
                break
    return seen


def pool(groups_in_order: Sequence, n_groups: int) -> np.ndarray:
    """Positions (in the retrieval-ordered shortlist) that the predictor re-ranks: the networks of the
    first ``n_groups`` groups (all of them when 0)."""
    groups_in_order = np.asarray(groups_in_order)
    if not n_groups:
        return np.arange(len(groups_in_order))
    return np.flatnonzero(np.isin(groups_in_order, first_groups(groups_in_order, n_groups)))


def rerank_list(groups_in_order: Sequence, predict: Callable[[np.ndarray], np.ndarray],
                policy: RerankPolicy) -> tuple[np.ndarray, dict[int, float]]:
    """A query's shortlist (already in retrieval order, ``groups_in_order[i]`` the group of its i-th
    network) re-ranked: the new order of positions and the predicted accuracy of each re-ranked one.
    ``predict(positions)`` returns the predicted accuracies of those positions (only the pool's are
    asked for)."""
    picked = pool(groups_in_order, policy.groups)
    predicted = np.asarray(predict(picked), dtype=np.float64) if picked.size else np.zeros(0)
    first = picked[np.argsort(-predicted, kind="stable")]
    rest = np.setdiff1d(np.arange(len(groups_in_order)), picked, assume_unique=True)
    return np.concatenate([first, rest]).astype(np.int64), dict(zip(picked.tolist(), predicted.tolist()))


def rerank_scores(scores: np.ndarray, predicted: np.ndarray, owner: np.ndarray, exclude: Sequence,
                  policy: RerankPolicy) -> np.ndarray:
    """Validation's form of :func:`rerank_list`, on ``[n_queries, n_networks]`` matrices: final ranking
    scores in which each row's re-ranked networks sit above every other network, ordered by
    ``predicted`` (tied predictions stay tied, as the metrics count ties), and the rest keep their
    retrieval ``scores``. ``exclude[i]``: columns row ``i`` may not retrieve (its own networks);
    ``owner[j]``: the group of network ``j``."""
    out = scores.astype(np.float64).copy()
    lift = np.abs(out).max() + 2.0
    for i in range(len(out)):
        s = out[i].copy()
        s[exclude[i]] = -np.inf
        order = top_k(s, policy.shortlist)
        _, reranked = rerank_list(owner[order], lambda positions: predicted[i, order[positions]], policy)
        cols = order[sorted(reranked)]
        out[i, cols] = lift + predicted[i, cols]
    return out
