"""Transferability scores besides LogME (:mod:`.logme`), from their papers' definitions, and the hybrid
shortlist they re-rank.

- **LEEP** (Nguyen, Hassner, Seeger, Archambeau; ICML 2020): the source head's softmax ``theta(z | x)`` over
  the network's own (source) classes ``z``, on the query's labelled images; the empirical joint
  ``P(y, z) = mean_i theta(z | x_i) [y_i = y]`` gives ``P(y | z)``; LEEP is the mean log-likelihood of the
  true labels under the "dummy classifier" ``sum_z P(y | z) theta(z | x)``. Higher is better.
- **NCE** (Tran, Nguyen, Hassner; ICCV 2019), as LEEP computes it from a network: the negative conditional
  entropy ``-H(Y | Z)`` of the query labels given the source head's hard predictions ``z = argmax theta``.

Both read the source head a zoo version keeps (LogME reads the penultimate features), so one forward pass of
each prepared network gives all three (:func:`~.search.transfer_scores`). Which re-ranks the hybrid shortlist
is chosen on the selection datasets (``scripts/choose_defaults.py``), never on a reported one.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SCORES = ("logme", "leep", "nce")
EPS = 1e-12


def leep(source_probs: np.ndarray, y: np.ndarray) -> float:
    """LEEP of source-head probabilities ``[N, Z]`` (rows summing to 1) for query labels ``y [N]``."""
    theta = np.asarray(source_probs, dtype=np.float64)
    y = np.asarray(y).reshape(-1)
    n = len(y)
    classes, yi = np.unique(y, return_inverse=True)
    joint = np.zeros((len(classes), theta.shape[1]))
    np.add.at(joint, yi, theta)
    joint /= n                                        # P(y, z)
    cond = joint / np.maximum(joint.sum(0, keepdims=True), EPS)   # P(y | z)
    eep = np.einsum("nz,nz->n", theta, cond[yi])      # sum_z P(y_i | z) theta(z | x_i)
    return float(np.mean(np.log(np.maximum(eep, EPS))))


def nce(source_pred: np.ndarray, y: np.ndarray) -> float:
    """NCE: ``-H(Y | Z)`` of query labels ``y [N]`` given hard source predictions ``source_pred [N]``."""
    z = np.asarray(source_pred).reshape(-1)
    y = np.asarray(y).reshape(-1)
    _, zi = np.unique(z, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    joint = np.zeros((zi.max() + 1, yi.max() + 1))
    np.add.at(joint, (zi, yi), 1.0)
    joint /= len(y)
    pz = joint.sum(1, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((joint / np.maximum(pz, EPS))[nz])))


def hybrid_shortlist(rows_in_order: Sequence[int], groups: Sequence[str], k: int, min_groups: int,
                     must_include: Sequence[int] = ()) -> list[int]:
    """The hybrid policy's shortlist: the first ``k`` of ``rows_in_order`` (a learned ranking, best first;
    ``groups[i]`` the group of its i-th row) such that they span at least ``min_groups`` groups where the
    ranking has that many: each group holds at most ``ceil(k / min_groups)`` places until every row has been
    seen, then the places left go down the ranking. ``must_include`` (e.g. the generalist's best-ranked
    network) is kept, taking the place of the last-ranked row whose group holds another place if it did not make
it (so the groups spanned stay spanned). Returns rows, in ranking order."""
    rows, groups = list(rows_in_order), list(groups)
    k = min(int(k), len(rows))
    if k <= 0:
        return []
    cap = -(-k // max(1, int(min_groups)))
    taken: list[int] = []
    per: dict[str, int] = {}
    for pos, g in enumerate(groups):
        if len(taken) == k:
            break
        if per.get(g, 0) < cap:
            taken.append(pos)
            per[g] = per.get(g, 0) + 1
    for pos in range(len(rows)):  # fewer groups than min_groups: fill up in ranking order
        if len(taken) == k:
            break
        if pos not in taken:
            taken.append(pos)
    chosen = [rows[p] for p in sorted(taken)]
    group_of = dict(zip(rows, groups))
    for row in must_include:
        if row in rows and row not in chosen:
            if len(chosen) == k:  # make room: the last-ranked row whose group keeps another place (the spread stays)
                counts: dict[str, int] = {}
                for r in chosen:
                    counts[group_of[r]] = counts.get(group_of[r], 0) + 1
                drop = next((r for r in reversed(chosen) if counts[group_of[r]] > 1 and r not in must_include),
                            chosen[-1])
                chosen.remove(drop)
            chosen.append(row)
    order = {r: i for i, r in enumerate(rows)}
    return sorted(chosen, key=order.__getitem__)
