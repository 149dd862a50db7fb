"""Fine-tuning one candidate: a zoo network, a new head for the dataset's classes, SGD with warm-up then
one cosine over all the steps (per batch), early stopping on a validation split carved from the training
images (stratified, seeded). The test split is touched once, by the kept weights, for the report.

:func:`finetune_candidate` runs in a worker process (it reads the registry, writes nothing there): it
returns its figures and leaves the kept weights in a safetensors file for the parent.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from ..device import batch_on, cpu_state
from ..device import resolve as resolve_device
from ..retrieval.starts import calibration_set, prepared_start, split_train_val
from ..zoo.measure import accuracy
from ..zoo.tensors import random_crop, to_tensor
from .probe import probe_head
from .schedule import scheduler

__all__ = ["finetune_candidate", "split_train_val", "train"]


def train(module: nn.Module, x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, settings: dict,
          mean, std) -> dict:
    """Fine-tune ``module`` in place; leaves it at the best validation epoch. Returns its figures.

    ``settings["head_first"]``: the new head is first fitted on the frozen features of ``x`` (the linear probe,
    :func:`~.probe.probe_head`), then everything is trained from there. ``settings["keep_probe"]``: the probe
    (the prepared start, frozen, with the probe's head) is a candidate too, as "epoch 0": when no epoch validates
    better, the module is left as the probe (``kept``: ``"probe"``). Either costs one forward pass of ``x`` and a
    logistic regression (a second or two at the benchmark's sizes on 2 cores)."""
    probe_state, probe_val, probe_fit = None, None, None
    if settings.get("head_first") or settings.get("keep_probe"):
        fresh = {k: v.detach().clone() for k, v in module.classifier.linear.state_dict().items()}
        probe_fit = probe_head(module, x, y, mean, std, settings["seed"])
        if probe_fit is not None:
            probe_val = accuracy(module, xv, yv, mean, std)
            probe_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            if not settings.get("head_first"):
                module.classifier.linear.load_state_dict(fresh)
    torch.manual_seed(settings["seed"])
    rng = np.random.default_rng(settings["seed"])
    bs = settings["batch_size"]
    per_epoch = max(1, math.ceil(len(x) / bs))
    total = max(1, int(round(settings["epochs"] * per_epoch)))
    warmup = int(settings["warmup_fraction"] * total)
    opt = torch.optim.SGD(module.parameters(), lr=settings["lr"], momentum=settings["momentum"],
                          weight_decay=settings["weight_decay"], nesterov=settings["momentum"] > 0)
    sched = scheduler(opt, total, warmup)
    best, best_state, best_epoch, since, history, lrs = -1.0, None, 0, 0, [], []
    if settings.get("keep_probe") and probe_state is not None:
        best, best_state = probe_val, probe_state  # epoch 0: the probe
    step, epoch, stopped = 0, 0, False
    while step < total and not stopped:
        module.train()
        order = rng.permutation(len(x))
        for start in range(0, len(x), bs):
            if step >= total:
                break
            idx = order[start:start + bs]
            if len(idx) < 2:  # a batch of one breaks batch norm; it still counts as a step
                step += 1
                sched.step()
                continue
            xb, yb = batch_on(module, to_tensor(random_crop(x[idx], settings["crop_pad"], rng), mean, std),
                              torch.from_numpy(y[idx]))
            loss = nn.functional.cross_entropy(module(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lrs.append(opt.param_groups[0]["lr"])
            sched.step()
            step += 1
        epoch += 1
        acc = accuracy(module, xv, yv, mean, std)
        history.append(acc)
        if acc > best:
            best, best_epoch, since = acc, epoch, 0
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            since += 1
            stopped = since >= settings["patience"] and step < total
    module.load_state_dict(best_state)
    module.eval()
    return {"val_accuracy": best, "best_epoch": best_epoch, "epochs": step / per_epoch, "steps": step,
            "stopped_early": stopped, "history": history, "lrs": lrs,
            "kept": "probe" if best_epoch == 0 else "finetuned", "probe_val_accuracy": probe_val,
            "head_first": bool(settings.get("head_first")) and probe_fit is not None}


def finetune_candidate(job: dict) -> dict:
    """A worker's job: ``job`` holds the candidate's model URI, the dataset's arrays and classes, the
    settings (a dict), the tracking URI, the thread count and where to write the kept weights."""
    import mlflow
    from safetensors.torch import save_file

    from ..registry.pyfunc import load_network_info

    t0 = time.time()
    torch.set_num_threads(job["threads"])
    mlflow.set_tracking_uri(job["tracking_uri"])
    mlflow.set_registry_uri(job["tracking_uri"])
    info = load_network_info(job["uri"])
    device = resolve_device(job["settings"].get("device"))
    s = job["settings"]
    calib = calibration_set(job["x_train"], job["y_train"], s["val_fraction"], s["seed"])
    module, mean, std, prep = prepared_start({"kind": "zoo", "uri": job["uri"]}, len(job["classes"]), calib,
                                             s["seed"], device)
    tr, va = split_train_val(job["y_train"], s["val_fraction"], s["seed"])
    fit = train(module, job["x_train"][tr], job["y_train"][tr], job["x_train"][va], job["y_train"][va],
                job["settings"], mean, std)
    test_acc = accuracy(module, job["x_test"], job["y_test"], mean, std)
    save_file(cpu_state(module), job["out"])
    return fit | {"test_accuracy": test_acc, "seconds": time.time() - t0, "info": info, "device": str(device),
                  "n_train": int(len(tr)), "n_val": int(len(va)), "preparation": prep.to_dict()}
