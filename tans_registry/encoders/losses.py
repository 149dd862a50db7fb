"""Losses of the meta-contrastive space: hinge (the reference's), symmetric InfoNCE, predictor MSE.

Every contrastive loss takes two ``[B, D]`` batches of embeddings that the caller has already
L2-normalised (this is not checked; the scores are plain dot products, i.e. cosines for unit rows):

* ``q`` -- query (dataset) embeddings, row ``i`` is dataset ``i``;
* ``m`` -- model embeddings, row ``i`` is a network that is *positive* for dataset ``i``.

Every other row of the batch is a negative ("in-batch negatives"), so a batch must not hold two rows
of the same dataset (or a network that is also good on another row's dataset): the loss would push
apart a pair that belongs together. The reference draws one network per dataset per step, which
satisfies this.

The scores are ``S = q @ m.T``: ``S[i, j]`` is query ``i`` against model ``j``; the diagonal holds the
positive pairs.

Optional per-row ``weights`` (shape ``[B]``, finite, >= 0, not all zero) turn the mean over the batch
rows into a weighted mean ``sum(w_i * term_i) / sum(w_i)``. Only their ratios matter. They are used
as given: detach them if they must not receive gradients. :func:`positive_weights` makes them from
the positives' accuracies.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["hinge_loss", "info_nce_loss", "predictor_loss", "pairwise_rank_loss", "positive_weights"]


def _check_pair(q: Tensor, m: Tensor) -> int:
    if not isinstance(q, Tensor) or not isinstance(m, Tensor):
        raise ValueError("q and m must be torch tensors")
    if q.dim() != 2 or m.dim() != 2:
        raise ValueError(f"q and m must be 2-D [B, D]; got shapes {tuple(q.shape)} and {tuple(m.shape)}")
    if q.shape != m.shape:
        raise ValueError(f"q and m must have the same shape [B, D]; got {tuple(q.shape)} and {tuple(m.shape)}")
    batch = q.shape[0]
    if batch < 2:
        raise ValueError(f"a contrastive loss needs B >= 2 rows (in-batch negatives); got B = {batch}")
    return batch


def _check_weights(weights: Tensor | None, n: int) -> Tensor | None:
    if weights is None:
        return None
    if not isinstance(weights, Tensor):
        weights = torch.as_tensor(weights)
    if weights.dim() != 1 or weights.shape[0] != n:
        raise ValueError(f"weights must have shape [{n}]; got {tuple(weights.shape)}")
    w = weights.detach()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weights must be finite")
    if bool((w < 0).any()):
        raise ValueError("weights must be >= 0")
    if not bool((w > 0).any()):
        raise ValueError("weights must not all be zero")
    return weights


def _mean(terms: Tensor, weights: Tensor | None) -> Tensor:
    if weights is None:
        return terms.mean()
    w = weights.to(dtype=terms.dtype, device=terms.device)
    return (w * terms).sum() / w.sum()


def hinge_loss(q: Tensor, m: Tensor, margin: float = 0.2, weights: Tensor | None = None) -> Tensor:
    """The reference's margin hinge over cosine scores, both directions, all in-batch negatives.

    With ``S = q @ m.T``, the term of batch row ``i`` is::

        term_i = sum_{j != i} max(0, margin - S[i, i] + S[i, j])   # query i -> models: model j is a negative
               + sum_{j != i} max(0, margin - S[i, i] + S[j, i])   # model i -> queries: query j is a negative

    and the loss is the mean of ``term_i`` over the rows ``i`` (the weighted mean with ``weights``).

    Difference from the reference: it summed these terms over the batch rows as well; we average over
    the rows, so the loss's scale (and its balance against the predictor's MSE) no longer grows with
    the number of anchors. The sum over negatives is
    kept, so the loss still grows with the number of *violating* negatives per row: at most
    ``2 * (B - 1) * margin`` per row at initialisation-like scores (all equal), 0 once every negative is
    ``margin`` below its positive. The reference weighted hinge and MSE 1:1 with its summed hinge
    (batch 140); keep that in mind when choosing the weight of :func:`predictor_loss`.

    ``margin >= 0``; ``B >= 2``. Returns a differentiable scalar.
    """
    batch = _check_pair(q, m)
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0; got {margin}")
    weights = _check_weights(weights, batch)
    scores = q @ m.T
    pos = scores.diagonal()
    off_diag = ~torch.eye(batch, dtype=torch.bool, device=scores.device)
    # [i, j]: query i against negative model j, anchored on positive S[i, i]
    q_to_m = (margin - pos.unsqueeze(1) + scores).clamp(min=0)
    # [i, j]: model i against negative query j, anchored on positive S[i, i]; S[j, i] = S.T[i, j]
    m_to_q = (margin - pos.unsqueeze(1) + scores.T).clamp(min=0)
    terms = ((q_to_m + m_to_q) * off_diag).sum(dim=1)
    return _mean(terms, weights)


def info_nce_loss(q: Tensor, m: Tensor, temperature: float = 0.1, weights: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE: cross-entropy of ``S / temperature`` against the diagonal, both directions.

    ``loss = 0.5 * (mean_i CE(row i of S/t, target i) + mean_i CE(column i of S/t, target i))``, where the
    row term picks dataset ``i``'s network among all models of the batch and the column term picks
    network ``i``'s dataset among all queries. With ``weights`` each direction's mean over ``i`` is the
    weighted mean (row ``i``'s weight applies to query ``i`` and to model ``i``).

    Not in the reference (which has no temperature); offered as the usual alternative. ``temperature > 0``;
    ``B >= 2``. Returns a differentiable scalar.
    """
    batch = _check_pair(q, m)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    weights = _check_weights(weights, batch)
    logits = (q @ m.T) / temperature
    target = torch.arange(batch, device=logits.device)
    ce_q = F.cross_entropy(logits, target, reduction="none")    # query i -> which model
    ce_m = F.cross_entropy(logits.T, target, reduction="none")  # model i -> which query
    return 0.5 * (_mean(ce_q, weights) + _mean(ce_m, weights))


def _as_vector(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch tensor")
    if x.dim() == 2 and x.shape[1] == 1:  # a Linear(..., 1) head gives [B, 1]
        x = x[:, 0]
    if x.dim() != 1:
        raise ValueError(f"{name} must have shape [B] or [B, 1]; got {tuple(x.shape)}")
    return x


def predictor_loss(pred: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean squared error of the accuracy predictor (the weighted mean with ``weights``).

    ``pred`` and ``target`` are ``[B]`` or ``[B, 1]`` (a ``[B, 1]`` is read as ``[B]``, never broadcast
    against a ``[B]`` into ``[B, B]``); ``B >= 1``.
    """
    p = _as_vector(pred, "pred")
    t = _as_vector(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same length; got {tuple(pred.shape)} and {tuple(target.shape)}")
    if p.shape[0] == 0:
        raise ValueError("predictor_loss needs at least one row")
    weights = _check_weights(weights, p.shape[0])
    return _mean((p - t.to(dtype=p.dtype)) ** 2, weights)


def pairwise_rank_loss(pred_a: Tensor, pred_b: Tensor, acc_a: Tensor, acc_b: Tensor, scale: float = 20.0) -> Tensor:
    """Logistic ranking loss on pairs of networks of the same dataset: the mean of
    ``softplus(-scale * sign(acc_a - acc_b) * (pred_a - pred_b))`` over the pairs, weighted by
    ``|acc_a - acc_b|`` (pairs of equal accuracy count zero; ``0`` when every pair is tied).

    MSE alone is dominated by the level of each dataset (0.3 on one, 0.99 on another), while what a
    query needs is the order of the candidates *within* a dataset; this term asks for that order, and
    weighs a pair by how far apart the two measured accuracies are (a 0.001 difference is noise).
    ``scale`` turns accuracy differences (fractions) into logits.
    """
    pa, pb = _as_vector(pred_a, "pred_a"), _as_vector(pred_b, "pred_b")
    aa, ab = _as_vector(acc_a, "acc_a").to(pa.dtype), _as_vector(acc_b, "acc_b").to(pa.dtype)
    if not pa.shape == pb.shape == aa.shape == ab.shape:
        raise ValueError("pred_a, pred_b, acc_a and acc_b must have the same length")
    if pa.shape[0] == 0:
        raise ValueError("pairwise_rank_loss needs at least one pair")
    diff = aa - ab
    w = diff.abs()
    if float(w.sum()) == 0.0:
        return pa.sum() * 0.0
    terms = F.softplus(-scale * torch.sign(diff) * (pa - pb))
    return (w * terms).sum() / w.sum()


def positive_weights(accuracies: Tensor, sharpness: float = 0.0) -> Tensor:
    """Per-row weights from the accuracy of each row's positive network: ``exp(sharpness * (acc - max acc))``.

    ``sharpness = 0`` gives all ones (plain mean). ``sharpness > 0`` lets pairs whose positive network is
    good on its dataset count more: two rows' weights stand in the ratio ``exp(sharpness * (acc_i - acc_j))``
    (e.g. sharpness 10 on accuracies in [0, 1]: a network 0.1 better counts e = 2.72 times as much).
    Because the losses take a weighted *mean*, subtracting the batch maximum changes nothing but the
    numerics: the weights lie in (0, 1], the best row has weight 1, and no row gets weight 0 (an
    accuracy of 0 stays usable, unlike with ``acc ** sharpness``). Accuracies may be on any scale
    (fractions or percentages; sharpness is per unit of that scale). ``sharpness < 0`` is refused.

    Returns a detached float tensor of the accuracies' shape ``[B]``.
    """
    acc = torch.as_tensor(accuracies).detach()
    if acc.dim() != 1 or acc.shape[0] == 0:
        raise ValueError(f"accuracies must be a non-empty 1-D tensor; got shape {tuple(acc.shape)}")
    if not acc.is_floating_point():
        acc = acc.to(torch.get_default_dtype())
    if not bool(torch.isfinite(acc).all()):
        raise ValueError("accuracies must be finite")
    if not sharpness >= 0:
        raise ValueError(f"sharpness must be >= 0; got {sharpness}")
    return torch.exp(sharpness * (acc - acc.max()))
