"""Evaluating a set of encoders on held-out groups: retrieval under the protocols of :mod:`.protocols`,
re-ranked with the retrieval side's own policy (:func:`~tans_registry.retrieval.rerank.rerank_scores`,
as `tans query` re-ranks), and the predictor's ranking of each held-out group's networks (weighted
Kendall tau against measured accuracy); and the score that picks checkpoints and champions."""
from __future__ import annotations

import numpy as np
import torch

from ..encoders.models import TansEncoders, pad_sets, retrieval_scores
from ..retrieval.rerank import RerankPolicy, rerank_scores
from ..zoo.meta import MetaGroup
from .metrics import mean_regret, mean_weighted_tau, predictor_errors
from .protocols import candidates, good_siblings, own_and_sibling_positives, owners, retrieval_reports


def embed_models(enc: TansEncoders, groups: list[MetaGroup]) -> tuple[torch.Tensor, np.ndarray]:
    """Model embeddings of every network of ``groups`` and the group index of each."""
    topo = torch.from_numpy(np.concatenate([g.topology for g in groups]))
    func = torch.from_numpy(np.concatenate([g.functional for g in groups]))
    return enc.model(topo, func if enc.cfg.use_functional else None), owners(groups)


@torch.no_grad()
def evaluate(enc: TansEncoders, val: list[MetaGroup], zoo: list[MetaGroup]) -> dict:
    """Retrieval over every zoo and validation network, and the predictor's ranking within each
    validation group; ``enc`` is left in training mode."""
    enc.eval()
    everyone = candidates(val, zoo)
    m, owner = embed_models(enc, everyone)
    d = enc.query(*pad_sets([g.features for g in everyone]))  # every candidate group's dataset embedding
    q = d[[everyone.index(g) for g in val]]
    scores = retrieval_scores(q, m, d[owner], enc.cfg.dataset_weight).numpy()
    own, siblings = own_and_sibling_positives(val, everyone, owner)
    good = good_siblings(val, everyone, owner, siblings)
    final = None
    if enc.predictor is not None:
        topo = torch.from_numpy(np.concatenate([g.topology for g in everyone]))
        predicted = np.stack([enc.predictor(q[i].expand(len(m), -1), m, topo).numpy() for i in range(len(val))])
        final = rerank_scores(scores, predicted, owner, own, RerankPolicy.of(enc.cfg))
    report = retrieval_reports(scores, own, siblings, good, final)
    if enc.predictor is not None:
        taus = [(predicted[i, own[i]], g.accuracy) for i, g in enumerate(val)]
        report["val_weighted_tau"] = mean_weighted_tau(taus)
        report["val_regret_top1"] = mean_regret(taus)
        report.update({f"val_pred_{k}": v for k, v in predictor_errors(
            np.concatenate([p for p, _ in taus]), np.concatenate([a for _, a in taus])).items()})
    enc.train()
    return report


def selection_score(report: dict) -> float:
    """What picks the best checkpoint and moves the champion: Recall@5 of the strictest retrieval
    protocol the validation datasets allow (good sibling networks, else any sibling network, else the
    group's own: TANS's) plus the predictor's weighted tau (0 without a predictor)."""
    r5 = report.get("val_xgood_recall_at_5",
                    report.get("val_xtask_recall_at_5", report.get("val_recall_at_5", 0.0)))
    return float(r5) + float(np.nan_to_num(report.get("val_weighted_tau", 0.0)))


def selection_metric(report: dict) -> str:
    """The name of the Recall@5 that :func:`selection_score` used."""
    for key in ("val_xgood_recall_at_5", "val_xtask_recall_at_5"):
        if key in report:
            return key
    return "val_recall_at_5"
