"""One start of the benchmark, fine-tuned at each budget in a worker process (it reads the registry and
local files, writes nothing there).

A start is a zoo version (``{"kind": "zoo", "uri": ...}``), a subnet of the shared base supernet
(``{"kind": "base", "weights": path, "supernet": spec, "arch": ...}``: its batch norm re-estimated on the
query's training part, as each zoo network's was on its source data), or an architecture with random
weights (``{"kind": "scratch", "supernet": spec, "arch": ..., "seed": ...}``). Every budget starts again
from the same weights with its own schedule; the fine-tuning is the product's
(:func:`tans_registry.finetune.candidate.train`), without early stopping.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..device import resolve as resolve_device
from ..finetune.candidate import split_train_val, train
from ..finetune.network import new_head
from ..zoo.measure import accuracy, recalibrate_bn
from ..zoo.space import SupernetSpec, build_supernet, extract_subnet, validate_arch
from ..zoo.tensors import DEFAULT_MEAN, DEFAULT_STD

CALIB_IMAGES = 500  # training images re-estimating a base-supernet subnet's batch norm (as the zoo's 500)


def _module(start: dict, n_classes: int, x_calib: np.ndarray, seed: int, device: torch.device):
    """The start's network (new head for the query's classes) on ``device``, and its preprocessing."""
    kind = start["kind"]
    if kind == "zoo":
        from ..registry.pyfunc import load_module, load_network_info

        info = load_network_info(start["uri"])
        return new_head(load_module(start["uri"]), n_classes, seed).to(device), info["mean"], info["std"]
    spec = SupernetSpec.from_dict(start["supernet"])
    torch.manual_seed(start.get("seed", seed))
    supernet = build_supernet(spec)
    if kind == "base":
        from safetensors.torch import load_file

        path = Path(start["weights"])
        if not path.is_file() and start.get("base_run"):  # a Ray task on another machine: fetch it there
            from ..zoo.store import group_dir

            path = group_dir(start["base_run"]) / "supernet.safetensors"
        supernet.load_state_dict(load_file(str(path)))
    elif kind != "scratch":
        raise ValueError(f"unknown start kind {kind!r}")
    module = extract_subnet(supernet, validate_arch(start["arch"], spec)).to(device)
    if kind == "base":
        recalibrate_bn(module, x_calib, DEFAULT_MEAN, DEFAULT_STD)
    return new_head(module, n_classes, seed).to(device), list(DEFAULT_MEAN), list(DEFAULT_STD)


def finetune_start(job: dict) -> dict:
    """``job``: the start, the dataset's arrays and classes, the settings (a dict; ``epochs`` replaced by
    each of ``budgets``), the tracking URI and the thread count. Returns per budget: validation accuracy
    after every epoch, the kept (best validation) epoch's test accuracy, seconds."""
    import mlflow

    torch.set_num_threads(job["threads"])
    mlflow.set_tracking_uri(job["tracking_uri"])
    mlflow.set_registry_uri(job["tracking_uri"])
    s = job["settings"]
    tr, va = split_train_val(job["y_train"], s["val_fraction"], s["seed"])
    x, y, xv, yv = job["x_train"][tr], job["y_train"][tr], job["x_train"][va], job["y_train"][va]
    calib = x[np.random.default_rng(s["seed"]).permutation(len(x))[:CALIB_IMAGES]]
    out = {}
    device = resolve_device(s.get("device"))
    for budget in job["budgets"]:
        t0 = time.time()
        module, mean, std = _module(job["start"], len(job["classes"]), calib, s["seed"], device)
        settings = s | {"epochs": float(budget), "patience": 10 ** 6}  # every epoch measured: no early stop
        fit = train(module, x, y, xv, yv, settings, mean, std)
        out[str(budget)] = {"val_accuracy": fit["val_accuracy"], "best_epoch": fit["best_epoch"],
                            "history": [float(h) for h in fit["history"]], "steps": fit["steps"],
                            "test_accuracy": accuracy(module, job["x_test"], job["y_test"], mean, std),
                            "seconds": time.time() - t0}
    return {"budgets": out, "n_train": int(len(tr)), "n_val": int(len(va)), "device": str(device)}




def logme_group(job: dict) -> list[float]:
    """A worker's share of LogME-all: the LogME of ``job["uris"]`` (one group's networks) on the dataset."""
    import mlflow

    from ..retrieval.search import logme_scores

    torch.set_num_threads(job["threads"])
    mlflow.set_tracking_uri(job["tracking_uri"])
    mlflow.set_registry_uri(job["tracking_uri"])
    return logme_scores(job["uris"], job["dataset"], job["seed"], job["device"]).tolist()
