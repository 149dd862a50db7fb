"""The unit costs behind `tans bench`'s and the zoo build's time, measured on a built work directory (what
the chain's time budget is planned from): preparing one start, its linear probe, one fine-tuning epoch,
the test evaluation, LogME per network, and one sandwich step of supernet training (the zoo build's unit:
batch 64, the largest subnet plus one random one).

    .venv/bin/python scripts/bench_costs.py --work-dir WORK [--data chinese_mnist] [--max-train 1000]
        [--max-test 1000] [--networks 10] [--threads 1] [--sandwich-steps 20] [--plain-depthwise]

``--plain-depthwise`` measures the same work with the plain depthwise layers (``zoo/fastconv.py`` off: every
kernel tap computed, padding included), for a before/after comparison in one checkout.

Each figure is the median of the networks measured (seconds, this process alone, ``--threads`` torch
threads: 1 is what each of `tans bench`'s two workers gets on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--data", default="chinese_mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--max-train", type=int, default=1000)
    ap.add_argument("--max-test", type=int, default=1000)
    ap.add_argument("--networks", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sandwich-steps", type=int, default=20, help="supernet training steps timed (0: none)")
    ap.add_argument("--plain-depthwise", action="store_true",
                    help="the plain depthwise layers (every kernel tap computed), to compare with the default")
    a = ap.parse_args()

    import mlflow
    import torch

    from tans_registry import tracking
    from tans_registry.bench.floors import linear_probe
    from tans_registry.bench.starts import features
    from tans_registry.data import load_dataset
    from tans_registry.finetune.candidate import train
    from tans_registry.finetune.config import FinetuneSettings
    from tans_registry.registry.index import load_index
    from tans_registry.registry.names import model_uri
    from tans_registry.retrieval.search import logme_scores
    from tans_registry.retrieval.starts import calibration_set, prepared_start, split_train_val
    from tans_registry.zoo.measure import accuracy

    from dataclasses import asdict

    if a.plain_depthwise:
        from tans_registry.zoo.fastconv import use_plain_layers

        use_plain_layers()  # the worker processes it spawns too
    torch.set_num_threads(a.threads)
    wd, uri = tracking.setup(a.work_dir)
    mlflow.set_registry_uri(uri)
    idx = load_index(wd, latency=False)[0]
    ds = load_dataset(a.data, data_dir=a.data_dir, max_train=a.max_train, max_test=a.max_test)
    s = asdict(FinetuneSettings(epochs=1.0, patience=10 ** 6, device="cpu"))
    tr, va = split_train_val(ds.y_train, s["val_fraction"], 0)
    x, y, xv, yv = ds.x_train[tr], ds.y_train[tr], ds.x_train[va], ds.y_train[va]
    calib = calibration_set(ds.x_train, ds.y_train, s["val_fraction"], 0)
    rows = np.linspace(0, len(idx) - 1, min(a.networks, len(idx))).round().astype(int)
    uris = [model_uri(str(idx.names[r]), int(idx.versions[r])) for r in rows]
    cost: dict[str, list[float]] = {k: [] for k in ("prepare", "probe", "epoch", "test_eval", "logme")}
    for u in uris:
        t = time.perf_counter()
        module, mean, std, _ = prepared_start({"kind": "zoo", "uri": u}, ds.n_classes, calib, 0)
        cost["prepare"].append(time.perf_counter() - t)
        t = time.perf_counter()
        linear_probe(features(module, x, mean, std), y, features(module, ds.x_test, mean, std), ds.y_test)
        cost["probe"].append(time.perf_counter() - t)
        t = time.perf_counter()
        train(module, x, y, xv, yv, s, mean, std)
        cost["epoch"].append(time.perf_counter() - t)
        t = time.perf_counter()
        accuracy(module, ds.x_test, ds.y_test, mean, std)
        cost["test_eval"].append(time.perf_counter() - t)
    t = time.perf_counter()
    logme_scores(uris, ds, 0, "cpu", x_calib=calib)
    cost["logme"] = [(time.perf_counter() - t) / len(uris)]
    if a.sandwich_steps > 0:
        from tans_registry.zoo.profiles import TrainConfig
        from tans_registry.zoo.space import SupernetSpec, build_supernet
        from tans_registry.zoo.train import train_supernet

        torch.manual_seed(0)
        spec = SupernetSpec(n_classes=ds.n_classes)
        passes = a.sandwich_steps / max(1, -(-len(x) // 64))
        t = time.perf_counter()
        done = train_supernet(build_supernet(spec), spec, x, y, TrainConfig(epochs=passes, warmup_fraction=0.0,
                                                                            eval_images=0), mean, std)
        cost["sandwich_step"] = [(time.perf_counter() - t) / done["steps"]]
    out = {"data": a.data, "plain_depthwise": a.plain_depthwise, "n_train": int(len(x)), "n_val": int(len(xv)), "n_test": int(len(ds.x_test)),
           "networks": len(uris), "threads": a.threads,
           "seconds_median": {k: float(np.median(v)) for k, v in cost.items()}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
