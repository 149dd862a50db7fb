"""The benchmark's floors under every method: logistic regression on the raw pixels of the SAME training
images the fine-tuning uses, and the same logistic regression on frozen features (a linear probe).

A fine-tuned start that scores below them has not beaten a linear model. The configuration follows
/work/shared/baselines.md's "logreg" row: sklearn ``LogisticRegression(max_iter=200, C=1.0)`` (lbfgs, L2),
a StandardScaler fit on the training set, pixels /255 in native channels. Stopping at max_iter is part of
the configuration, so sklearn's ConvergenceWarning is silenced (the fit is
:func:`tans_registry.finetune.probe.fit_score`, the one the head-first recipe uses). numpy and scikit-learn
only (no torch).
"""
from __future__ import annotations

import numpy as np

from ..finetune.probe import fit_score, linear_probe  # noqa: F401 (the floor on features)


def logreg_pixels(x_train, y_train, x_test, y_test, seed: int = 0) -> dict:
    """Logistic regression on raw pixels: uint8 images [N, S, S, 3] -> float /255, flattened. Grayscale
    sets stored as 3 identical channels (np.array_equal over the train images) use the first channel only
    (native channels: S*S features instead of 3*S*S). Returns {"test_accuracy", "seconds", "n_train",
    "features", "n_iter"} (n_iter None for a single-class training set)."""
    x_train, x_test = np.asarray(x_train), np.asarray(x_test)
    if x_train.ndim == 4 and x_train.shape[-1] == 3 and np.array_equal(x_train[..., 0], x_train[..., 1]) \
            and np.array_equal(x_train[..., 0], x_train[..., 2]):
        x_train, x_test = x_train[..., :1], x_test[..., :1]
    a_train = x_train.reshape(len(x_train), -1).astype(np.float64) / 255.0
    a_test = x_test.reshape(len(x_test), -1).astype(np.float64) / 255.0
    return fit_score(a_train, y_train, a_test, y_test, seed)
