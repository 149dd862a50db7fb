"""The retrieval protocols of meta-validation, on ``[n_val, n_networks]`` score matrices.

* ``val_recall_at_k`` (TANS's): the held-out group's own networks among every network.
* ``val_xtask_recall_at_k`` (cross-task): the group's own networks are removed from the candidates; the
  positives are the networks of the other tasks of its dataset (other classes, same domain). Groups of
  single-group datasets do not count here. Sibling tasks share the source dataset's images and, once its
  classes are used up, classes too: this measures finding the right domain, not a new dataset.
* ``val_xgood_recall_at_k``: as cross-task, but only the siblings' *good* networks (top quarter of their
  group by accuracy) are positives, ranked after re-ranking: the network must also be one of the best.
"""
from __future__ import annotations

import numpy as np

from ..zoo.meta import MetaGroup
from .metrics import retrieval_report


def owners(groups: list[MetaGroup]) -> np.ndarray:
    """The group index of every network of ``groups``, in order."""
    return np.concatenate([[i] * len(g.accuracy) for i, g in enumerate(groups)])


def candidates(val: list[MetaGroup], zoo: list[MetaGroup]) -> list[MetaGroup]:
    """What a validation query searches: the zoo and the validation groups' own networks."""
    return zoo + [g for g in val if g not in zoo]


def own_and_sibling_positives(val: list[MetaGroup], everyone: list[MetaGroup], owner: np.ndarray):
    """Per validation group: its own networks' columns, and its siblings' (the other groups of the
    same source dataset), or None when the dataset has a single group."""
    own, siblings = [], []
    for g in val:
        own.append(np.flatnonzero(owner == everyone.index(g)))
        sib = [i for i, h in enumerate(everyone) if h.dataset == g.dataset and h is not g]
        siblings.append(np.flatnonzero(np.isin(owner, sib)) if sib else None)
    return own, siblings


def good_siblings(val: list[MetaGroup], everyone: list[MetaGroup], owner: np.ndarray, siblings: list,
                  quantile: float = 0.75) -> list:
    """Per validation group: the columns of its siblings' *good* networks (accuracy at or above the
    ``quantile`` of their own group), or None without siblings."""
    cut = np.array([np.quantile(g.accuracy, quantile) for g in everyone])
    acc = np.concatenate([g.accuracy for g in everyone])
    good = acc >= cut[owner]
    return [None if s is None else s[good[s]] for s in siblings]


def without_own(scores: np.ndarray, own: list, rows: list[int]) -> np.ndarray:
    """``scores[rows]`` with each row's own networks ranked below every other candidate."""
    x = scores[rows].copy()
    low = x.min() - 1.0
    for r, i in enumerate(rows):
        x[r, own[i]] = low
    return x


def retrieval_reports(scores: np.ndarray, own: list, siblings: list, good: list | None = None,
                      final: np.ndarray | None = None) -> dict:
    """The three protocols (module docstring) on ``scores``; ``final`` (retrieval then re-ranking;
    ``scores`` when None) ranks the good-sibling protocol."""
    report = {f"val_{k.replace('@', '_at_')}": v
              for k, v in retrieval_report(scores, [set(o.tolist()) for o in own]).items()}
    rows = [i for i, s in enumerate(siblings) if s is not None]
    if rows:
        x = without_own(scores, own, rows)
        report |= {f"val_xtask_{k.replace('@', '_at_')}": v
                   for k, v in retrieval_report(x, [set(siblings[i].tolist()) for i in rows]).items()}
        if good is not None:
            x = without_own(scores if final is None else final, own, rows)
            report |= {f"val_xgood_{k.replace('@', '_at_')}": v
                       for k, v in retrieval_report(x, [set(good[i].tolist()) for i in rows]).items()}
    return report
