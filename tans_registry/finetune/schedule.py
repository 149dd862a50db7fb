"""The fine-tuning learning rate: linear warm-up, then one cosine to zero over the whole run, stepped
per batch (TANS stepped its cosine every batch as if each batch were an epoch, so its rate oscillated)."""
from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base rate for optimiser step ``step`` (0-based) of ``total_steps``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1; got {total_steps}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def scheduler(optimizer, total_steps: int, warmup_steps: int):
    """A ``LambdaLR`` of :func:`lr_factor`; call ``.step()`` after every batch."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup_steps))
