"""One start, probed and fine-tuned at each budget in a worker process (it reads the registry and local files,
writes nothing there): the unit of the fine-tuning benchmark (`tans bench`) and of the transfer table (`tans zoo
transfer`), so that both measure a start the same way.

Every start, whatever its kind (a zoo version, a subnet of the shared base supernet, an architecture with
random weights), is prepared by the one function :func:`tans_registry.retrieval.starts.prepared_start`: batch
norm re-estimated on the same query training images, a new head from the same seed, its own preprocessing.
From that state come its linear probe (a logistic regression on its frozen features: a floor) and every
budget's fine-tuning (each budget starts again from it, with its own schedule; the product's
:func:`tans_registry.finetune.candidate.train`, without early stopping).
"""
from __future__ import annotations

import time

import torch

from ..device import resolve as resolve_device
from ..retrieval.logme import logme
from ..retrieval.starts import BN_POLICY, calibration_set, prepared_start, split_train_val
from ..zoo.measure import accuracy
from .candidate import train
from .probe import features, linear_probe


def finetune_start(job: dict) -> dict:
    """``job``: the start, the dataset's arrays and classes, the settings (a dict; ``epochs`` replaced by
    each of ``budgets``), the tracking URI and the thread count (and optionally ``bn`` and ``x_source``, the
    batch-norm policy: :func:`~tans_registry.retrieval.starts.prepare`). Returns the preparation, the linear
    probe's figures (with ``logme`` set: also the LogME of the training part's prepared features), and per
    budget: validation accuracy after every epoch, the kept (best validation)
    epoch's validation and test accuracy, seconds."""
    import mlflow

    torch.set_num_threads(job["threads"])
    mlflow.set_tracking_uri(job["tracking_uri"])
    mlflow.set_registry_uri(job["tracking_uri"])
    s = job["settings"]
    tr, va = split_train_val(job["y_train"], s["val_fraction"], s["seed"])
    x, y, xv, yv = job["x_train"][tr], job["y_train"][tr], job["x_train"][va], job["y_train"][va]
    calib = calibration_set(job["x_train"], job["y_train"], s["val_fraction"], s["seed"])
    device = resolve_device(s.get("device"))
    n_classes = len(job["classes"])
    t0 = time.time()
    bn, x_source = job.get("bn", BN_POLICY), job.get("x_source")
    module, mean, std, prep = prepared_start(job["start"], n_classes, calib, s["seed"], device, bn=bn, x_source=x_source)
    f_train = features(module, x, mean, std)
    probe = linear_probe(f_train, y, features(module, job["x_test"], mean, std), job["y_test"], seed=s["seed"],
                         f_val=features(module, xv, mean, std), y_val=yv) | {"seconds_with_features": time.time() - t0}
    if job.get("logme"):  # the LogME of the prepared start's training features (scripts/bn_policy.py)
        probe["logme"] = logme(f_train, y)
    out = {}
    for budget in job["budgets"]:
        t0 = time.time()
        if out:  # every budget starts again from the prepared start
            module, mean, std, again = prepared_start(job["start"], n_classes, calib, s["seed"], device, bn=bn,
                                                      x_source=x_source)
            assert again == prep
        # every epoch measured (no early stop); the fine-tuned figures are the fine-tuned network's (the probe is
        # reported beside them, never kept in their place)
        settings = s | {"epochs": float(budget), "patience": 10 ** 6, "keep_probe": False}
        fit = train(module, x, y, xv, yv, settings, mean, std)
        out[str(budget)] = {"val_accuracy": fit["val_accuracy"], "best_epoch": fit["best_epoch"],
                            "history": [float(h) for h in fit["history"]], "steps": fit["steps"],
                            "test_accuracy": accuracy(module, job["x_test"], job["y_test"], mean, std),
                            "seconds": time.time() - t0}
    return {"budgets": out, "n_train": int(len(tr)), "n_val": int(len(va)), "device": str(device),
            "preparation": prep.to_dict(), "probe": probe}
