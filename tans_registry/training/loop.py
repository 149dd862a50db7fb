"""The encoders' training loop: Adam, one batch of every training group per step, evaluation every
``eval_every`` steps on the held-out groups (:func:`~tans_registry.validation.evaluate.evaluate`), early
stopping on the selection score, the best checkpoint kept.

Each step takes every training group once: a random half of its query set (instance dropout, so the
encoder sees many sets per dataset) and one positive network, sampled among the group's networks with
probability rising with measured accuracy (``positive_sharpness``: 0 = uniform, as TANS; the default
prefers the better networks, since "near the dataset" should mean "does well on it"). The loss is the
contrastive term (hinge over all in-batch negatives in both directions, or InfoNCE) plus the
predictor's MSE on the positive and on ``rank_pairs`` pairs of random networks of the same group, plus
a pairwise ranking term on those pairs (``rank_weight``): the predictor must order networks *within* a
dataset, which the MSE alone, dominated by each dataset's accuracy level, did not teach it (weighted
tau on held-out datasets below zero).
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
from tqdm.auto import tqdm

from ..encoders.losses import hinge_loss, info_nce_loss, pairwise_rank_loss, predictor_loss
from ..encoders.models import TansEncoders, pad_sets
from ..validation.evaluate import evaluate, selection_score
from ..zoo.meta import MetaGroup
from .config import EncoderTrainConfig

log = logging.getLogger("tans_registry")


def instance_dropout(groups: list[MetaGroup], rng: np.random.Generator, frac: float = 0.5) -> list[np.ndarray]:
    """A random ``frac`` (at least 2) of each group's query-set features."""
    sets = []
    for g in groups:
        f = g.features
        if len(f) > 2:
            f = f[rng.permutation(len(f))[: max(2, int(len(f) * frac))]]
        sets.append(f)
    return sets


def fit(enc: TansEncoders, train: list[MetaGroup], val: list[MetaGroup], cfg: EncoderTrainConfig,
        on_eval=None) -> dict:
    """The training loop: Adam, evaluation every ``eval_every`` steps, early stopping on the
    validation metric; leaves ``enc`` at its best checkpoint and returns that checkpoint's report."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.Adam(enc.parameters(), lr=cfg.lr)
    best, best_state, best_report, since_best = -math.inf, None, {}, 0
    for step in tqdm(range(1, cfg.steps + 1), desc="encoders", unit="step", disable=not cfg.progress):
        loss = _train_step(enc, opt, train, cfg, rng)
        if step % cfg.eval_every and step != cfg.steps:
            continue
        report = evaluate(enc, val, train) | {"train_loss": loss}
        if on_eval:
            on_eval(step, report)
        score = selection_score(report)
        if score > best:
            best, since_best, best_report = score, 0, report | {"step": step}
            best_state = {k: v.detach().clone() for k, v in enc.state_dict().items()}
        else:
            since_best += 1
            if since_best >= cfg.patience:
                log.info("early stop at step %d (best at step %d)", step, best_report["step"])
                break
    enc.load_state_dict(best_state)
    enc.eval()
    return best_report


def _train_step(enc, opt, train, cfg, rng) -> float:
    x, mask = pad_sets(instance_dropout(train, rng))
    pos = []
    for g in train:
        w = np.exp(cfg.positive_sharpness * (g.accuracy - g.accuracy.max()))
        pos.append(rng.choice(len(w), p=w / w.sum()))
    topo = torch.from_numpy(np.stack([g.topology[i] for g, i in zip(train, pos)]))
    func = torch.from_numpy(np.stack([g.functional[i] for g, i in zip(train, pos)]))
    q = enc.query(x, mask)
    m = enc.model(topo, func if enc.cfg.use_functional else None)
    loss = (hinge_loss(q, m, margin=cfg.margin) if cfg.loss == "hinge"
            else info_nce_loss(q, m, temperature=cfg.temperature))
    if enc.predictor is not None:
        # the positive, and rank_pairs pairs (a, b) of random networks of each group
        n_pairs = cfg.rank_pairs
        a = np.stack([rng.integers(len(g.accuracy), size=n_pairs) for g in train])   # [G, P]
        b = np.stack([rng.integers(len(g.accuracy), size=n_pairs) for g in train])
        picks = np.concatenate([np.asarray(pos)[:, None], a, b], axis=1)             # [G, 1 + 2P]
        gi = np.repeat(np.arange(len(train)), picks.shape[1])
        ni = picks.ravel()
        topo_p = torch.from_numpy(np.stack([train[g].topology[n] for g, n in zip(gi, ni)]))
        func_p = torch.from_numpy(np.stack([train[g].functional[n] for g, n in zip(gi, ni)]))
        m_p = enc.model(topo_p, func_p if enc.cfg.use_functional else None)
        pred = enc.predictor(q[torch.from_numpy(gi)], m_p, topo_p).view(len(train), -1)
        target = torch.from_numpy(np.stack([train[g].accuracy[picks[g]] for g in range(len(train))]).astype(np.float32))
        loss = loss + cfg.predictor_weight * predictor_loss(pred.ravel(), target.ravel())
        if cfg.rank_weight:
            pa, pb = pred[:, 1: 1 + n_pairs].ravel(), pred[:, 1 + n_pairs:].ravel()
            ta, tb = target[:, 1: 1 + n_pairs].ravel(), target[:, 1 + n_pairs:].ravel()
            loss = loss + cfg.rank_weight * pairwise_rank_loss(pa, pb, ta, tb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())
