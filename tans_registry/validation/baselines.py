"""The baselines every trained encoder is compared with on the same held-out datasets."""
from __future__ import annotations

import numpy as np

from ..zoo.meta import MetaGroup
from .metrics import mean_regret, mean_weighted_tau
from .protocols import candidates, good_siblings, own_and_sibling_positives, owners, retrieval_reports


def pixel_heuristic(val: list[MetaGroup], zoo: list[MetaGroup]) -> dict:
    """Baseline: "the nearest dataset by pixel statistics" (22 per-channel moments and histogram values
    of the training images, :func:`~tans_registry.data.stats.pixel_descriptor`).

    Retrieval ranks networks by their source group's descriptor distance to the query's (a group's
    networks tie; no accuracy oracle breaks the tie; for the good-siblings protocol the bigger network
    goes first). Under TANS's protocol this is trivially perfect (the
    query's own group is a candidate with the same descriptor); the cross-task protocol is the fair one.
    Ranking (weighted tau): a validation network's predicted accuracy is the measured accuracy of the
    same architecture in the nearest *training* group."""
    everyone = candidates(val, zoo)
    owner = owners(everyone)
    desc = np.stack([g.descriptor for g in everyone])
    scale = desc.std(0) + 1e-6  # each statistic on its own scale
    scores = np.stack([-np.linalg.norm((desc - g.descriptor) / scale, axis=1)[owner] for g in val])
    own, siblings = own_and_sibling_positives(val, everyone, owner)
    good = good_siblings(val, everyone, owner, siblings)
    final = None
    if all(g.n_params is not None for g in everyone):
        # "nearest dataset, then its biggest network": size breaks the ties within a group
        size = np.concatenate([g.n_params for g in everyone])
        final = scores + 1e-9 * size / size.max()
    report = retrieval_reports(scores, own, siblings, good, final)
    zdesc = np.stack([h.descriptor for h in zoo])
    taus = []
    for g in val:
        near = zoo[int(np.argmin(np.linalg.norm((zdesc - g.descriptor) / scale, axis=1)))]
        acc_of = {tuple(t): a for t, a in zip(near.topology.tolist(), near.accuracy.tolist())}
        fallback = float(near.accuracy.mean())
        taus.append((np.array([acc_of.get(tuple(t), fallback) for t in g.topology.tolist()]), g.accuracy))
    report["val_weighted_tau"] = mean_weighted_tau(taus)
    report["val_regret_top1"] = mean_regret(taus)
    return report


def best_average_heuristic(val: list[MetaGroup], zoo: list[MetaGroup]) -> dict:
    """Baseline for ranking only: a network's predicted accuracy is its architecture's mean measured
    accuracy over the *training* groups (an architecture no training group holds gets their overall
    mean). What "take the architecture that is best on average" ranks; it needs no query data at all."""
    seen: dict[tuple, list[float]] = {}
    for h in zoo:
        for t, a in zip(h.topology.tolist(), h.accuracy.tolist()):
            seen.setdefault(tuple(t), []).append(a)
    if not seen:
        return {}
    fallback = float(np.mean([a for v in seen.values() for a in v]))
    pairs = [(np.array([np.mean(seen[tuple(t)]) if tuple(t) in seen else fallback for t in g.topology.tolist()]),
              g.accuracy) for g in val]
    return {"val_weighted_tau": mean_weighted_tau(pairs), "val_regret_top1": mean_regret(pairs)}


def size_heuristic(val: list[MetaGroup]) -> dict:
    """Baseline for ranking only: the bigger network (more parameters) is predicted to be the better."""
    if any(g.n_params is None for g in val):
        return {}
    pairs = [(g.n_params, g.accuracy) for g in val]
    return {"val_weighted_tau": mean_weighted_tau(pairs), "val_regret_top1": mean_regret(pairs)}
