"""Raw dataset descriptors: cheap pixel statistics, the registry's dataset embedding until the
encoders exist (and the "nearest dataset by pixel statistics" baseline later)."""
from __future__ import annotations

import numpy as np

from .loading import ImageDataset

HIST_BINS = 16


def pixel_descriptor(ds: ImageDataset, max_images: int = 2000, seed: int = 0) -> np.ndarray:
    """22 floats: per-channel mean and std of [0, 1] pixels (6), then a 16-bin histogram of the
    gray level (fractions summing to 1), over at most ``max_images`` seeded training images."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(ds.x_train))[:max_images]
    x = ds.x_train[np.sort(idx)].astype(np.float32) / 255.0
    mean = x.mean(axis=(0, 1, 2))
    std = x.std(axis=(0, 1, 2))
    hist, _ = np.histogram(x.mean(axis=3), bins=HIST_BINS, range=(0.0, 1.0))
    return np.concatenate([mean, std, hist / max(hist.sum(), 1)]).astype(np.float32)


def image_hashes(x: np.ndarray) -> np.ndarray:
    """One int64 per image: the first 8 bytes of the sha256 of its uint8 pixels (as loaded: resized, RGB).

    What the zoo keeps of its training images, so that a dataset offered later as "new" (`tans bench
    --query-data`) can be checked image by image against everything the zoo was trained on."""
    import hashlib

    x = np.ascontiguousarray(x, dtype=np.uint8)
    out = np.empty(len(x), dtype=np.int64)
    for i, img in enumerate(x):
        out[i] = int.from_bytes(hashlib.sha256(img.tobytes()).digest()[:8], "little", signed=True)
    return out
