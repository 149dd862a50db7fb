"""The linear probe: a logistic regression on a start's frozen features. The benchmark's floor under every
start, the head-first recipe's first step (the new head fitted on frozen features, then everything trained),
and the query's fallback (a query keeps the probe when it validates better than the fine-tuned network).

The configuration is /work/shared/baselines.md's "logreg" row: sklearn ``LogisticRegression(max_iter=200,
C=1.0)`` (lbfgs, L2) on features standardised with a StandardScaler fit on the training set; stopping at
max_iter is part of it, so sklearn's ConvergenceWarning is silenced. :func:`fold_into_linear` turns the
fitted scaler and regression into the weights of the network's own ``nn.Linear`` head, so a probe is a
network like any other (fine-tuned from, registered, exported to ONNX). torch is imported inside the
functions that need it.
"""
from __future__ import annotations

import time
import warnings

import numpy as np


def fit_logreg(a_train: np.ndarray, y_train: np.ndarray, seed: int):
    """``(scaler, classifier)`` fitted on float features [N, D]; None for a training set of one class."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    y_train = np.asarray(y_train).reshape(-1)
    if len(np.unique(y_train)) < 2:
        return None
    # one BLAS thread: at these sizes (hundreds of images, ~1,000-3,000 features) OpenBLAS's threads only
    # contend, with each other and with the benchmark's other worker (a 1,280-feature probe on 805 images:
    # 4.9 s on 2 threads, 0.69 s on 1, the same 200 iterations; scripts/bench_costs.py)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        scaler = StandardScaler().fit(a_train)
        clf = LogisticRegression(max_iter=200, C=1.0, solver="lbfgs", random_state=seed)
        clf.fit(scaler.transform(a_train), y_train)
    return scaler, clf


def fit_score(a_train, y_train, a_test, y_test, seed: int, a_val=None, y_val=None) -> dict:
    """Fit on float features [N, D] and score on the test features (and on ``a_val`` when given: what a query
    compares with its fine-tuned network); a training set with a single class cannot fit a classifier and scores
    the majority (that one) class's accuracy. Returns {"test_accuracy", "seconds" (scaling + fit), "n_train",
    "features", "n_iter"} (n_iter None for one class), with "val_accuracy" when ``a_val`` is given."""
    y_train, y_test = np.asarray(y_train).reshape(-1), np.asarray(y_test).reshape(-1)
    out = {"n_train": int(len(y_train)), "features": int(a_train.shape[1])}
    start = time.perf_counter()
    fitted = fit_logreg(a_train, y_train, seed)
    if fitted is None:                                     # majority class = the only class seen
        classes = np.unique(y_train)

        def predict(a):
            return np.full(len(a), classes[0] if len(classes) else -1)
        seconds, n_iter = time.perf_counter() - start, None
    else:
        seconds = time.perf_counter() - start
        scaler, clf = fitted

        def predict(a):
            return clf.predict(scaler.transform(a))
        n_iter = int(np.max(clf.n_iter_))
    out |= {"test_accuracy": float(np.mean(predict(a_test) == y_test)) if len(y_test) else 0.0, "seconds": seconds,
            "n_iter": n_iter}
    if a_val is not None:
        y_val = np.asarray(y_val).reshape(-1)
        out["val_accuracy"] = float(np.mean(predict(a_val) == y_val)) if len(y_val) else 0.0
    return out


def linear_probe(f_train, y_train, f_test, y_test, seed: int = 0, f_val=None, y_val=None) -> dict:
    """:func:`fit_score` on given frozen features [N, D] (flattened): the benchmark's linear probe."""
    def flat(f):
        f = np.asarray(f, dtype=np.float64)
        return f.reshape(len(f), -1) if f.size else f.reshape(len(f), 0)
    return fit_score(flat(f_train), y_train, flat(f_test), y_test, seed,
                     a_val=None if f_val is None else flat(f_val), y_val=y_val)


def features(module, x: np.ndarray, mean, std, batch_size: int = 256) -> np.ndarray:
    """The module's penultimate features of ``x`` (eval mode, no gradient)."""
    import torch

    from ..zoo.measure import penultimate
    from ..zoo.tensors import to_tensor

    module.eval()
    dev = next(module.parameters()).device
    with torch.no_grad():
        return torch.cat([penultimate(module, to_tensor(x[i:i + batch_size], mean, std).to(dev)).cpu()
                          for i in range(0, len(x), batch_size)]).numpy() if len(x) else np.zeros((0, 0), np.float32)


def fold_into_linear(scaler, clf, n_classes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(weight [n_classes, dim], bias [n_classes])`` of an ``nn.Linear`` computing the fitted regression's
    decision function on raw (unscaled) features: ``W' = W / sigma``, ``b' = b - W' mu``. A two-class fit's
    single decision row goes to the second class (the first gets zeros), as sklearn's ``predict`` reads it; a
    class absent from the training part gets zero weights and a bias below every fitted one (never predicted
    first)."""
    coef = np.asarray(clf.coef_, dtype=np.float64)
    intercept = np.asarray(clf.intercept_, dtype=np.float64)
    classes = np.asarray(clf.classes_)
    if len(classes) == 2 and coef.shape[0] == 1:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.array([0.0, intercept[0]])
    w = coef / scaler.scale_[None, :]
    b = intercept - w @ scaler.mean_
    weight = np.zeros((n_classes, dim), dtype=np.float64)
    bias = np.full(n_classes, (b.min() if len(b) else 0.0) - 10.0)
    weight[classes] = w
    bias[classes] = b
    return weight.astype(np.float32), bias.astype(np.float32)


def probe_head(module, x: np.ndarray, y: np.ndarray, mean, std, seed: int) -> dict | None:
    """Fit the linear probe on the module's frozen features of ``x`` and write it into the module's head
    (``module.classifier.linear``, which must already have the query's classes); None (head untouched) when
    ``y`` holds one class. Returns {"seconds", "n_iter"}."""
    import torch

    t0 = time.perf_counter()
    fitted = fit_logreg(features(module, x, mean, std), y, seed)
    if fitted is None:
        return None
    linear = module.classifier.linear
    weight, bias = fold_into_linear(*fitted, linear.out_features, linear.in_features)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(bias))
    return {"seconds": time.perf_counter() - t0, "n_iter": int(np.max(fitted[1].n_iter_))}
