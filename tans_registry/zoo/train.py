"""Training an OFA supernet on one dataset: largest-first warm-up, then the sandwich rule.

The schedule follows OFA's order in miniature: the full network learns first (``warmup_fraction`` of
the steps train only the largest subnet), then every step trains the largest subnet plus
``n_random`` random subnets on the same batch (gradients summed), so that the weights the subnets
share serve all sizes. SGD with momentum and a per-step cosine schedule, as in the baselines.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..device import batch_on
from .measure import accuracy
from .profiles import TrainConfig
from .space import SupernetSpec, max_arch, set_active
from .tensors import color_jitter, random_crop, to_tensor


def _pass_steps(n_images: int, passes: float, cfg: TrainConfig) -> int:
    """Steps of ``passes`` passes over ``n_images`` in batches of ``cfg.batch_size``."""
    return int(round(passes * max(1, math.ceil(n_images / cfg.batch_size))))


def is_long_schedule(n_images: int, n_classes: int, cfg: TrainConfig) -> bool:
    """Whether ``steps_per_class`` raised this training beyond ``epochs`` passes."""
    return n_train_steps(n_images, n_classes, cfg) > max(1, _pass_steps(n_images, cfg.epochs, cfg))


def n_train_steps(n_images: int, n_classes: int, cfg: TrainConfig) -> int:
    """Steps of a training on ``n_images``: ``epochs`` passes, raised to ``steps_per_class`` steps per
    class (at most ``max_epochs`` passes)."""
    total = _pass_steps(n_images, cfg.epochs, cfg)
    if cfg.steps_per_class > 0:
        total = max(total, min(cfg.steps_per_class * n_classes, _pass_steps(n_images, cfg.max_epochs, cfg)))
    return max(1, total)


def train_supernet(
    supernet: nn.Module,
    spec: SupernetSpec,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    mean,
    std,
    x_eval: np.ndarray | None = None,
    y_eval: np.ndarray | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Train ``supernet`` in place; returns the final metrics. ``on_epoch(epoch, metrics)`` is
    called after each epoch (per-epoch MLflow metrics), ``progress(n_steps)`` after each step."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    py_rng = random.Random(cfg.seed)
    n = len(x)
    total = n_train_steps(n, spec.n_classes, cfg)
    warmup = int(cfg.warmup_fraction * total)
    long = is_long_schedule(n, spec.n_classes, cfg)
    jitter = cfg.long_jitter if long else 0.0
    smoothing = cfg.long_label_smoothing if long else 0.0
    opt = torch.optim.SGD(supernet.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    largest = max_arch(spec)
    step, epoch, loss_sum, loss_n = 0, 0, 0.0, 0
    metrics: dict = {}
    while step < total:
        order = rng.permutation(n)
        for start in range(0, n, cfg.batch_size):
            if step >= total:
                break
            idx = order[start : start + cfg.batch_size]
            if len(idx) < 2:  # batch norm needs two samples; the step still counts, so the loop ends
                step += 1
                sched.step()
                continue
            xb, yb = batch_on(supernet, to_tensor(color_jitter(random_crop(x[idx], cfg.crop_pad, rng), jitter, rng),
                                                  mean, std), torch.from_numpy(y[idx]))
            supernet.train()
            opt.zero_grad(set_to_none=True)
            set_active(supernet, largest)
            loss = nn.functional.cross_entropy(supernet(xb), yb, label_smoothing=smoothing)
            loss.backward()
            loss_sum += float(loss.detach())
            loss_n += 1
            if step >= warmup:
                for _ in range(cfg.n_random):
                    _sample_random(supernet, spec, py_rng)
                    nn.functional.cross_entropy(supernet(xb), yb, label_smoothing=smoothing).backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(supernet.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            if progress:
                progress(1)
        epoch += 1
        metrics = {"train_loss": loss_sum / max(loss_n, 1), "lr": sched.get_last_lr()[0], "long_schedule": float(long)}
        loss_sum, loss_n = 0.0, 0
        if x_eval is not None and y_eval is not None and cfg.eval_images > 0:
            set_active(supernet, largest)
            metrics["largest_test_acc"] = accuracy(supernet, x_eval[: cfg.eval_images],
                                                   y_eval[: cfg.eval_images], mean, std)
        if on_epoch:
            on_epoch(epoch, metrics)
    set_active(supernet, largest)
    supernet.eval()
    return {"steps": step, "epochs": epoch, **metrics}


def _sample_random(supernet: nn.Module, spec: SupernetSpec, rng: random.Random) -> None:
    from .space import N_BLOCKS, N_STAGES

    set_active(supernet, {
        "ks": [rng.choice(spec.ks_list) for _ in range(N_BLOCKS)],
        "e": [rng.choice(spec.expand_list) for _ in range(N_BLOCKS)],
        "d": [rng.choice(spec.depth_list) for _ in range(N_STAGES)],
    })
