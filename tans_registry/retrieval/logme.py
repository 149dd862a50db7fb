"""LogME (You, Liu, Wang, Long; ICML 2021), from the paper's definition: how well a network's
penultimate features ``F [N, D]`` explain a dataset's labels, with no training.

For each class ``k`` the one-hot target ``y_k`` gets a Bayesian linear model ``y = F w + e`` with
prior ``w ~ N(0, I / alpha)`` and noise ``e ~ N(0, I / beta)``; its log marginal evidence ``log p(y_k |
F, alpha, beta)`` is maximised over ``alpha`` and ``beta`` by the paper's fixed-point iteration
(MacKay's updates ``alpha = gamma / m'm``, ``beta = (N - gamma) / |Fm - y|^2``), computed through one
thin SVD of ``F`` (from the eigen-decomposition of its smaller Gram matrix). LogME is the mean over classes of the maximised evidence divided by ``N``: higher means the
features separate the classes better, so the network should fine-tune better.
"""
from __future__ import annotations

import math

import numpy as np

MAX_ITER, TOL = 100, 1e-5


def class_evidence(features: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """``(log evidence, alpha, beta)`` of the target ``y [N]`` on ``features [N, D]`` at the optimum."""
    f = np.asarray(features, dtype=np.float64)
    u, s = _left_singular(f)
    return _evidence(u, s, f.shape[1], np.asarray(y, dtype=np.float64))


def _evidence(u: np.ndarray, s: np.ndarray, d: int, y: np.ndarray) -> tuple[float, float, float]:
    """:func:`class_evidence` from the SVD ``F = U diag(s) V'`` (computed once per network)."""
    n = len(y)
    sigma = s ** 2                       # eigenvalues of F'F (the r = min(N, D) non-trivial ones)
    z = u.T @ y                          # y in the left singular basis
    outside = max(float(y @ y - z @ z), 0.0)  # |y|^2 outside the span of F
    alpha, beta = 1.0, 1.0
    for _ in range(MAX_ITER):
        denom = alpha + beta * sigma
        gamma = float(np.sum(beta * sigma / denom))
        m2 = float(np.sum((beta * s * z / denom) ** 2))             # |m|^2, m the posterior mean of w
        res2 = float(np.sum((alpha * z / denom) ** 2)) + outside    # |F m - y|^2
        new_alpha = gamma / max(m2, 1e-12)
        new_beta = (n - gamma) / max(res2, 1e-12)
        done = abs(new_alpha - alpha) / alpha < TOL and abs(new_beta - beta) / beta < TOL
        alpha, beta = new_alpha, new_beta
        if done:
            break
    denom = alpha + beta * sigma
    m2 = float(np.sum((beta * s * z / denom) ** 2))
    res2 = float(np.sum((alpha * z / denom) ** 2)) + outside
    log_det = float(np.sum(np.log(denom))) + (d - len(sigma)) * math.log(alpha)  # log |alpha I + beta F'F|
    evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - alpha / 2 * m2 - beta / 2 * res2
                - log_det / 2 - n / 2 * math.log(2 * math.pi))
    return evidence, alpha, beta


def _left_singular(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``U`` and ``s`` of the thin SVD of ``f`` from the eigen-decomposition of the smaller Gram matrix
    (``F F'`` or ``F'F``): the same basis at a fraction of the SVD's cost for N x 1280 features."""
    n, d = f.shape
    if n <= d:
        w, u = np.linalg.eigh(f @ f.T)
        return u, np.sqrt(np.clip(w, 0.0, None))
    w, v = np.linalg.eigh(f.T @ f)
    s = np.sqrt(np.clip(w, 0.0, None))
    keep = s > s.max() * 1e-10 if s.size and s.max() > 0 else np.zeros_like(s, dtype=bool)
    return (f @ v[:, keep]) / s[keep], s[keep]


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of ``features [N, D]`` for integer ``labels [N]`` (mean over the classes present)."""
    f = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if f.ndim != 2 or len(f) != len(labels) or len(f) < 2:
        raise ValueError(f"LogME needs features [N, D] with N >= 2 and N labels; got {f.shape} and {labels.shape}")
    n, d = f.shape
    u, s = _left_singular(f)  # one decomposition serves every class
    return float(np.mean([_evidence(u, s, d, (labels == c).astype(np.float64))[0] / n for c in np.unique(labels)]))
