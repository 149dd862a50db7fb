"""`tans bench-chain`: the whole benchmark from nothing, one command: the bench zoo (`tans zoo build
--profile bench`), its registration, the transfer table (`tans zoo transfer`), the encoders (their transfer
predictor learnt from it), the index, and `tans bench` over the reported datasets at ``seeds`` seeds, each
stage timed. With ``resume`` a rerun after a kill goes on where it stopped: the
zoo's finished groups, the registered versions, the transfer table's records, the cached index and the
benchmark's finished (dataset, seed) pairs are kept; the encoders (promoted to champion: the benchmark measures the encoders of this zoo) are retrained
unless this chain trained the champion on the same zoo.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict

from .config import BenchConfig, ChainConfig, ChainRecord

CHAIN_MARKER = "tans-bench-chain.json"  # in the work directory: the zoo the chain's encoders were trained on


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
    from ..transfer.config import TransferConfig
    from ..transfer.stage import build_table
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

    from ..errors import ConfigError
    from ..zoo import store
    from ..zoo.build import resolve_profile

    profile = resolve_profile(ZooConfig(profile=cfg.profile, data_dir=cfg.data_dir))
    if not profile.holdout:  # checked before hours of building, not after
        raise ConfigError(f"nothing to benchmark on: the {cfg.profile} profile holds no dataset out of this data "
                          "directory and it has no MANIFEST.json naming `report` datasets; pass a --data-dir with one "
                          "(e.g. ../shared/datasets), or use `tans zoo build --holdout` and `tans bench` stage by stage")
    # groups two at a time on 2 cores build ~1.45x faster than one (BENCHMARKS.md): one per core by default
    zoo_workers = cfg.workers or (None if cfg.executor == "ray" else max(1, os.cpu_count() or 1))
    zoo = timed("zoo_build", lambda: build_zoo(ZooConfig(
        profile=cfg.profile, resume=cfg.resume, data_dir=cfg.data_dir, workers=zoo_workers, executor=cfg.executor,
        ray_address=cfg.ray_address, device=cfg.device, **common)))
    facts["zoo"] = {"groups": len(zoo.groups), "built": sum(g.status != "skipped" for g in zoo.groups),
                    "holdout": list(zoo.holdout)}
    reg = timed("zoo_register", lambda: register_zoo(RegisterConfig(**common)))
    facts["registered"] = reg.created
    table = timed("transfer_table", lambda: build_table(TransferConfig(  # at the benchmark's budgets
        epochs=cfg.epochs, resume=cfg.resume, data_dir=cfg.data_dir, workers=cfg.workers, device=cfg.device,
        executor=cfg.executor, ray_address=cfg.ray_address, **common)))
    facts["transfer_table"] = {"tasks": len(table.tasks), "records": table.records, "written": table.written}
    wd, _ = tracking.setup(cfg.work_dir)
    # the encoders are kept on --resume only when this chain trained the champion on this very zoo ...
    runs = store.finished_group_runs(tracking.experiment_id("zoo", wd))
    from ..training.config import EncoderTrainConfig as _E
    from ..transfer.records import read_records

    texp = tracking.experiment_id("transfer", wd)  # ... and on the transfer records the encoders learn from
    learned = sorted(r["key"] for src in _E.transfer_sources for r in read_records(texp, src))
    zoo_key = hashlib.sha256((",".join(sorted(r.info.run_id for r in runs.values())) + "|" + ",".join(learned))
                             .encode()).hexdigest()[:20]
    marker = wd / CHAIN_MARKER
    done = json.loads(marker.read_text()) if marker.is_file() else {}
    champ = load_champion(required=False)
    if cfg.resume and done.get("zoo") == zoo_key and champ is not None and str(champ.version) == done.get("encoders"):
        times["encoders_train"] = 0.0
        facts["encoders"] = f"kept version {champ.version} (--resume; trained by this chain on this zoo)"
    else:
        enc = timed("encoders_train", lambda: train_encoders(EncoderTrainConfig(data_dir=cfg.data_dir, device=cfg.device,
                                                                                promote=True, **common)))
        facts["encoders"] = f"version {enc.encoders_version}"
        marker.write_text(json.dumps({"zoo": zoo_key, "encoders": str(enc.encoders_version)}))
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
