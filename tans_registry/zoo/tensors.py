"""From uint8 image arrays to normalised tensors, in batches."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


def to_tensor(x: np.ndarray, mean=DEFAULT_MEAN, std=DEFAULT_STD) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> float ``[N, 3, H, W]``, scaled to [0, 1] then normalised."""
    x = np.ascontiguousarray(x)
    if not x.flags.writeable:  # e.g. a Ray task's arrays (the object store's are read-only): torch warns
        x = x.copy()
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=t.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=t.dtype).view(1, -1, 1, 1)
    return (t - m) / s


def batches(x: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size]


def random_crop(x: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Random translation by up to ``pad`` pixels (zero padding), one offset per image."""
    if pad <= 0:
        return x
    n, h, w, c = x.shape
    padded = np.zeros((n, h + 2 * pad, w + 2 * pad, c), dtype=x.dtype)
    padded[:, pad : pad + h, pad : pad + w] = x
    dy = rng.integers(0, 2 * pad + 1, size=n)
    dx = rng.integers(0, 2 * pad + 1, size=n)
    out = np.empty_like(x)
    for i in range(n):
        out[i] = padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    return out


def color_jitter(x: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random contrast and brightness, one draw per image: each pixel moves to
    ``(p - m) * c + m + b`` (``m`` the image's mean, ``c`` in ``[1 - s, 1 + s]``, ``b`` in
    ``[-s, s] x 128``), clipped to uint8. Same change on every channel, so colours keep their hue."""
    if strength <= 0:
        return x
    n = len(x)
    c = rng.uniform(1.0 - strength, 1.0 + strength, size=(n, 1, 1, 1)).astype(np.float32)
    b = rng.uniform(-strength, strength, size=(n, 1, 1, 1)).astype(np.float32) * 128.0
    f = x.astype(np.float32)
    m = f.mean(axis=(1, 2, 3), keepdims=True)
    return np.clip((f - m) * c + m + b, 0, 255).round().astype(np.uint8)
