"""`tans zoo transfer`: the transfer table. Each training dataset of the zoo is taken as a query would be (the
benchmark's caps, seed and two budgets); a sample of networks from the *other* datasets' groups and one of the
generalist's (leave-one-dataset-out: a task's own dataset's groups are never its candidates) is prepared,
probed and fine-tuned by the benchmark's own start job (:func:`~tans_registry.finetune.starts.finetune_start`),
and each (task, start, budget) becomes a record in `tans/transfer` (:mod:`.records`), written as soon as its
start finishes: a killed run loses only the starts in flight, and ``--resume`` keeps what was written.

Caveat, written down rather than hidden: the generalist (and the base every group's supernet started from) was
trained on every training dataset pooled, the task's own among them, so the table flatters it there; the
benchmark's reported datasets are in no build, so its figures carry no such advantage.
"""
from __future__ import annotations

import contextlib
import os
import time
import zlib
from dataclasses import asdict

import numpy as np
from tqdm.auto import tqdm

from .. import tracking
from ..data import load_dataset, resolve_data_dir
from ..device import resolve as resolve_device
from ..errors import ConfigError, TansError
from ..executor import Executor, on_task_device, parallel_map, ray_session, shared_pool
from ..finetune.config import FinetuneSettings
from ..finetune.starts import finetune_start
from ..registry.index import load_index
from ..registry.names import model_uri
from ..zoo.generalist import DATASET as POOLED
from ..zoo.generalist import is_generalist
from ..zoo.meta import NOT_META
from ..zoo.store import finished_group_runs
from .config import TransferConfig, TransferRecord
from .records import Task, outcome_of, read_records, record_key, write_record


def pick_starts(groups: np.ndarray, datasets: np.ndarray, task_dataset: str, n: int, seed: int) -> list[int]:
    """``n`` index rows for a task of ``task_dataset``: one network of the generalist (when the zoo has one and
    ``n`` > 1), the rest from the other datasets' groups, one network of each group in a seeded order of the
    groups, round after round, each a seeded random network of its group. Never a row of the task's own
    dataset. Deterministic for (task, n, seed)."""
    rng = np.random.default_rng([seed, zlib.crc32(task_dataset.encode())])
    general = [int(r) for r in np.flatnonzero([is_generalist(str(g)) for g in groups])]
    others = [int(r) for r in np.flatnonzero(datasets != task_dataset) if r not in set(general)]
    by_group: dict[str, list[int]] = {}
    for r in others:
        by_group.setdefault(str(groups[r]), []).append(r)
    chosen = [int(rng.choice(general))] if general and n > 1 else []
    order = [by_group[g] for g in rng.permutation(sorted(by_group)).tolist()]
    pools = [list(rng.permutation(rows)) for rows in order]
    while len(chosen) < n and any(pools):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(int(pool.pop()))
    return chosen


def build_table(cfg: TransferConfig) -> TransferRecord:
    """Write (or, with ``resume``, complete) the transfer table's records of the zoo's training datasets."""
    t0 = time.time()
    resolve_device(cfg.device)  # cuda asked for and absent: refused before anything is read or written
    wd, uri = tracking.setup(cfg.work_dir)
    runs = finished_group_runs(tracking.experiment_id("zoo", wd))
    zoo_datasets = sorted({r.data.tags.get("tans.dataset", g) for g, r in runs.items() if g not in NOT_META})
    if not zoo_datasets:
        raise TansError("the zoo is empty: build and register it first (`tans zoo build`, `tans zoo register`)",
                        code="ZOO_EMPTY")
    names = list(cfg.datasets) if cfg.datasets else zoo_datasets
    unknown = [n for n in names if n not in zoo_datasets]
    if unknown:
        raise ConfigError(f"--datasets: {', '.join(map(repr, unknown))} is not a training dataset of this zoo; the "
                          f"transfer table's tasks are the zoo's own datasets ({', '.join(zoo_datasets)})")
    idx, _ = load_index(wd, latency=False)
    if len(set(idx.datasets.tolist()) - {"", POOLED}) < 2:
        raise TansError("the registered zoo holds fewer than two datasets' groups: a task needs other datasets' "
                        "networks. Register the zoo (`tans zoo register`) after building more datasets", code="ZOO_SMALL")
    exp = tracking.experiment_id("transfer", wd)
    have = {r["key"] for r in read_records(exp, "table")} if cfg.resume else set()
    # as the benchmark fine-tunes a start: the fine-tuned network's figures (the probe is recorded beside them)
    settings = asdict(FinetuneSettings(epochs=cfg.epochs, seed=cfg.seed, device=cfg.device, keep_probe=False))
    budgets = cfg.budgets
    executor = Executor(cfg.executor, cfg.ray_address)
    cores = os.cpu_count() or 1
    # Ray: cfg.workers tasks at once (default: one per start of a task, as the cluster's CPUs allow), one thread each
    workers = cfg.workers or (cfg.starts if executor.is_ray else cores)
    threads = 1 if executor.is_ray else max(1, cores // workers)
    data_dir = resolve_data_dir(cfg.data_dir)
    written = kept = total = 0
    bar = tqdm(total=len(names) * cfg.starts, desc="transfer table", unit="start", disable=not cfg.progress)
    try:
        with (ray_session(cfg.ray_address) if executor.is_ray else contextlib.nullcontext()), \
                shared_pool(workers, executor):
            for name in names:
                bar.set_postfix_str(name)
                ds = load_dataset(name, data_dir=data_dir, seed=cfg.seed, max_train=cfg.max_train, max_test=cfg.max_test)
                task = Task.of(ds, name, cfg.seed, cfg.max_train, cfg.max_test)
                starts = [{"uri": model_uri(str(idx.names[r]), int(idx.versions[r])), "group": str(idx.groups[r]),
                           "dataset": str(idx.datasets[r])}
                          for r in pick_starts(idx.groups, idx.datasets, name, cfg.starts, cfg.seed)]
                keys = {s["uri"]: [record_key(task, s["uri"], b, settings, "table") for b in budgets] for s in starts}
                todo = [s for s in starts if not all(k in have for k in keys[s["uri"]])]
                kept += sum(k in have for s in starts for k in keys[s["uri"]])
                total += len(starts) * len(budgets)
                bar.update(len(starts) - len(todo))
                # the records' keys keep the settings as asked (--resume across executors); the jobs, the device
                jobs = [{"start": {"kind": "zoo", "uri": s["uri"]}, "classes": list(ds.classes), "x_train": ds.x_train,
                         "y_train": ds.y_train, "x_test": ds.x_test, "y_test": ds.y_test, "settings": settings,
                         "budgets": budgets, "tracking_uri": uri, "threads": threads} for s in todo]
                gpus = 0.0
                if executor.is_ray:  # Ray hides the GPUs from a task that asks for none
                    jobs, gpus = on_task_device(jobs, cfg.device)
                results = parallel_map(finetune_start, jobs, workers, executor, threads=threads, gpus=gpus)
                for s, res in zip(todo, results):
                    for b, k in zip(budgets, keys[s["uri"]]):
                        if k not in have:  # (a budget kept from an earlier run was counted above)
                            write_record(exp, task, s, b, outcome_of(res, b), settings, "table")
                            written += 1
                    bar.update(1)
    finally:
        bar.close()
    return TransferRecord(experiment_id=exp, tasks=tuple(names), records=total, written=written, kept=kept,
                          seconds=time.time() - t0)
