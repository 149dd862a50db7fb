"""`tans bench-chain`: the whole benchmark from nothing, one command: the bench zoo (`tans zoo build
--profile bench`), its registration, the encoders, the index, and `tans bench` over the reported datasets
at ``seeds`` seeds, each stage timed. With ``resume`` a rerun after a kill goes on where it stopped: the
zoo's finished groups, the registered versions, the cached index and the benchmark's finished (dataset,
seed) pairs are kept; the encoders are retrained (seconds) unless a champion exists and the zoo is unchanged.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict

from .config import BenchConfig, ChainConfig, ChainRecord


def run_chain(cfg: ChainConfig) -> ChainRecord:
    import mlflow

    from .. import tracking
    from ..registry.config import RegisterConfig
    from ..registry.register import register_zoo
    from ..retrieval.config import IndexConfig
    from ..retrieval.embed import load_champion
    from ..retrieval.indexing import build_index
    from ..training.config import EncoderTrainConfig
    from ..training.stage import train_encoders
    from ..zoo.build import build_zoo
    from ..zoo.config import ZooConfig
    from .stage import run_bench

    t_all = time.time()
    common = {"work_dir": cfg.work_dir, "progress": cfg.progress}
    times: dict[str, float] = {}
    facts: dict[str, object] = {}

    def timed(name: str, fn):
        t = time.time()
        out = fn()
        times[name] = time.time() - t
        return out

    # groups two at a time on 2 cores build ~1.45x faster than one (BENCHMARKS.md): one per core by default
    zoo_workers = cfg.workers or (None if cfg.executor == "ray" else max(1, os.cpu_count() or 1))
    zoo = timed("zoo_build", lambda: build_zoo(ZooConfig(
        profile=cfg.profile, resume=cfg.resume, data_dir=cfg.data_dir, workers=zoo_workers, executor=cfg.executor,
        ray_address=cfg.ray_address, device=cfg.device, **common)))
    facts["zoo"] = {"groups": len(zoo.groups), "built": sum(g.status != "skipped" for g in zoo.groups),
                    "holdout": list(zoo.holdout)}
    reg = timed("zoo_register", lambda: register_zoo(RegisterConfig(**common)))
    facts["registered"] = reg.created
    wd, _ = tracking.setup(cfg.work_dir)
    unchanged = facts["zoo"]["built"] == 0 and not reg.created
    if cfg.resume and unchanged and load_champion(required=False) is not None:
        times["encoders_train"] = 0.0
        facts["encoders"] = "kept the champion (--resume; the zoo is unchanged)"
    else:
        enc = timed("encoders_train", lambda: train_encoders(EncoderTrainConfig(data_dir=cfg.data_dir,
                                                                                device=cfg.device, **common)))
        facts["encoders"] = f"version {enc.encoders_version}"
    timed("index_build", lambda: build_index(IndexConfig(**common)))
    bench = timed("bench", lambda: run_bench(BenchConfig(
        seeds=cfg.seeds, epochs=cfg.epochs, data_dir=cfg.data_dir, workers=cfg.workers, executor=cfg.executor,
        ray_address=cfg.ray_address, device=cfg.device, plots=cfg.plots, resume=cfg.resume, **common)))
    total = time.time() - t_all
    exp = tracking.experiment_id("bench", wd)
    with mlflow.start_run(experiment_id=exp, run_name="bench-chain",
                          tags={"tans.kind": "bench-chain", "tans.bench_run": bench.run_id}):
        mlflow.log_params({k: v for k, v in asdict(cfg).items() if k not in ("work_dir", "data_dir", "progress")})
        mlflow.log_metrics({f"{k}_seconds": v for k, v in times.items()} | {"total_seconds": total})
        mlflow.log_text(json.dumps({"stage_seconds": times, "facts": facts}, indent=1, default=str), "chain.json")
    return ChainRecord(stage_seconds=times, total_seconds=total, bench=bench, facts=facts)
