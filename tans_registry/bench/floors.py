"""The benchmark's floors under every method: logistic regression on the raw pixels of the SAME training
images the fine-tuning uses, and the same logistic regression on frozen features (a linear probe).

A fine-tuned start that scores below them has not beaten a linear model. The configuration follows
/work/shared/baselines.md's "logreg" row: sklearn ``LogisticRegression(max_iter=200, C=1.0)`` (lbfgs, L2),
a StandardScaler fit on the training set, pixels /255 in native channels. Stopping at max_iter is part of
the configuration, so sklearn's ConvergenceWarning is silenced. numpy and scikit-learn only (sklearn is
imported inside the functions; no torch).
"""
from __future__ import annotations

import time
import warnings

import numpy as np


def _fit_score(a_train, y_train, a_test, y_test, seed: int) -> dict:
    """StandardScaler + LogisticRegression on float features [N, D]; a training set with a single class
    cannot fit a classifier and scores the majority (that one) class's accuracy on the test set."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    y_train, y_test = np.asarray(y_train).reshape(-1), np.asarray(y_test).reshape(-1)
    out = {"n_train": int(len(y_train)), "features": int(a_train.shape[1])}
    start = time.perf_counter()
    classes = np.unique(y_train)
    if len(classes) < 2:                                   # majority class = the only class seen
        acc = float(np.mean(y_test == classes[0])) if len(classes) and len(y_test) else 0.0
        return {"test_accuracy": acc, "seconds": time.perf_counter() - start, "n_iter": None, **out}
    # one BLAS thread: at these sizes (hundreds of images, ~1,000-3,000 features) OpenBLAS's threads only
    # contend, with each other and with the benchmark's other worker (a 1,280-feature probe on 805 images:
    # 4.9 s on 2 threads, 0.69 s on 1, the same 200 iterations; scripts/bench_costs.py)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        scaler = StandardScaler().fit(a_train)
        clf = LogisticRegression(max_iter=200, C=1.0, solver="lbfgs", random_state=seed)
        clf.fit(scaler.transform(a_train), y_train)
    seconds = time.perf_counter() - start                  # scaling + fit (the "LR fit s" column)
    acc = float(np.mean(clf.predict(scaler.transform(a_test)) == y_test)) if len(y_test) else 0.0
    return {"test_accuracy": acc, "seconds": seconds, "n_iter": int(np.max(clf.n_iter_)), **out}


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
    return _fit_score(a_train, y_train, a_test, y_test, seed)


def linear_probe(f_train, y_train, f_test, y_test, seed: int = 0) -> dict:
    """The same logistic regression (StandardScaler + LogisticRegression(max_iter=200, C=1.0)) on given
    frozen features [N, D]. Same return dict as :func:`logreg_pixels`."""
    f_train = np.asarray(f_train, dtype=np.float64)
    f_test = np.asarray(f_test, dtype=np.float64)
    return _fit_score(f_train.reshape(len(f_train), -1), y_train, f_test.reshape(len(f_test), -1), y_test,
                      seed)
