"""The zoo learns from its queries: every `tans query --finetune N` appends its fine-tunings to the transfer
table (source ``query``), the same record as the table's own, its task kept only as its fingerprint, pixel
statistics, class count and query embedding (never an image); `tans encoders train` then learns from them too.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from .. import tracking
from ..finetune.config import QueryConfig, QueryRecord
from ..finetune.pipeline import query as _query
from .records import Task, write_record

log = logging.getLogger("tans_registry")


def record_finetunings(ds, ranking, results, cfg: QueryConfig) -> int:
    """Append a query's fine-tuned candidates to `tans/transfer`; returns how many records were written. A failure
    here is logged and never fails the query (its winner is registered already)."""
    from ..retrieval.embed import embed_dataset, load_champion

    try:
        wd, _ = tracking.setup(cfg.work_dir)
        exp = tracking.experiment_id("transfer", wd)
        champ = load_champion()
        q = embed_dataset(champ, ds, ranking.k_per_class, cfg.seed)
        spec = str(Path(cfg.data).resolve()) if Path(cfg.data).exists() else cfg.data  # a path: found from anywhere
        task = Task.of(ds, spec, cfg.seed)
        by_uri = {c.model_uri: c for c in ranking.candidates}
        settings = asdict(cfg.settings)
        n = 0
        for r in results:
            c = by_uri.get(r.parent)
            start = {"uri": r.parent, "group": c.group if c else "", "dataset": c.dataset if c else ""}
            outcome = {"history": list(r.history), "val_accuracy": r.val_accuracy, "test_accuracy": r.test_accuracy,
                       "seconds": r.seconds, "best_epoch": r.best_epoch, "kept": r.kept}
            write_record(exp, task, start, float(cfg.settings.epochs), outcome, settings, "query", embedding=q,
                         encoder_version=champ.version, parent_run=None)
            n += 1
        return n
    except Exception as exc:  # noqa: BLE001 - the query's own results stand; the table misses these records
        log.warning("the query's fine-tunings were not added to the transfer table: %s", str(exc).splitlines()[0][:200])
        return 0


def query(cfg: QueryConfig) -> QueryRecord:
    """`tans query` (:func:`tans_registry.finetune.pipeline.query`), its fine-tunings appended to the transfer table."""
    return _query(cfg, on_finetuned=lambda ds, ranking, results: record_finetunings(ds, ranking, results, cfg))


def record_bench(ds, spec: str, seed: int, caps: tuple[int, int], curves: list[dict], idx, settings: dict,
                 work_dir) -> int:
    """Append a benchmark (dataset, seed)'s fine-tuned zoo starts to `tans/transfer` (source ``bench``): ``curves``
    as :func:`tans_registry.bench.runs.log_curves` takes them (start ``row<N>`` of ``idx``). Its task is a
    dataset no encoder has trained on; `tans encoders train` leaves a benchmark's records out unless asked."""
    try:
        return _record_bench(ds, spec, seed, caps, curves, idx, settings, work_dir)
    except Exception as exc:  # noqa: BLE001 - the benchmark's own figures stand; the table misses these records
        log.warning("the benchmark's fine-tunings of %s were not added to the transfer table: %s", ds.name,
                    str(exc).splitlines()[0][:200])
        return 0


def _record_bench(ds, spec, seed, caps, curves, idx, settings, work_dir) -> int:
    wd, _ = tracking.setup(work_dir)
    exp = tracking.experiment_id("transfer", wd)
    task = Task.of(ds, spec, seed, *caps)
    n = 0
    for c in curves:
        if c["kind"] != "zoo":
            continue
        r = int(c["start"][3:])
        start = {"uri": c["uri"], "group": str(idx.groups[r]), "dataset": str(idx.datasets[r])}
        outcome = {"history": c["history"], "val_accuracy": c["kept_val_accuracy"], "test_accuracy": c["test_accuracy"],
                   "seconds": c["seconds"], "probe_test_accuracy": c.get("probe_test_acc"),
                   "best_epoch": 1 + max(range(len(c["history"])), key=lambda e: c["history"][e]) if c["history"] else 0}
        write_record(exp, task, start, c["budget"], outcome, settings | {"epochs": c["budget"]}, "bench")
        n += 1
    return n
