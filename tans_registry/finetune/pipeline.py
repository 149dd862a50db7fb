"""``tans query``: the whole user's path. Rank the zoo for the dataset (retrieval), fine-tune the top N
(``--finetune``), register the winner, export it to verified ONNX and register that (``--no-export``
to skip). Every step is recorded on the query's run in `tans/queries`."""
from __future__ import annotations

import time
from dataclasses import asdict

from .. import tracking
from ..export.config import ExportConfig
from ..export.stage import export_model
from ..retrieval.search import rank_dataset
from .config import QueryConfig, QueryRecord
from ..device import resolve as resolve_device
from ..executor import Executor
from .stage import finetune_top


def query(cfg: QueryConfig, on_finetuned=None) -> QueryRecord:
    """Rank, then (``cfg.finetune`` > 0) fine-tune the top candidates, register the winner and export it.
    ``on_finetuned(ds, ranking, results)``, when given, is called once the candidates are fine-tuned (before the
    export): the transfer table appends them (:func:`tans_registry.transfer.feedback.query`)."""
    import mlflow

    t0 = time.time()
    if cfg.finetune:
        resolve_device(cfg.settings.device)  # cuda asked for and absent: refused before the query runs
    resolve_device(cfg.device)
    ranking, ds = rank_dataset(cfg.rank_config())
    timings = dict(ranking.seconds) | {"rank": time.time() - t0}
    if cfg.finetune == 0:
        return QueryRecord(ranking=ranking, timings=timings)
    wd, _ = tracking.setup(cfg.work_dir)
    client = mlflow.MlflowClient()
    if ranking.run_id:  # the query run records how its candidates were fine-tuned
        for k, v in {"finetune": cfg.finetune, "export": cfg.export, "executor": cfg.executor,
                     **{f"finetune_{k}": v for k, v in asdict(cfg.settings).items()}}.items():
            client.log_param(ranking.run_id, k, v)
    t1 = time.time()
    results, winner = finetune_top(list(ranking.candidates[: cfg.finetune]), ds, cfg.settings,
                                   {"data": cfg.data, "data_dir": cfg.data_dir, "seed": cfg.seed}, ranking.run_id, wd,
                                   Executor(cfg.executor, cfg.ray_address))
    timings["finetune"] = time.time() - t1
    if on_finetuned is not None:
        on_finetuned(ds, ranking, results)
    module, network = winner.pop("module"), winner.pop("network")
    if ranking.run_id:  # before the export: a failed export leaves the fine-tuned winner recorded
        client.set_tag(ranking.run_id, "tans.finetuned_model", winner["model_uri"])
        client.log_metric(ranking.run_id, "winner_val_accuracy", winner["val_accuracy"])
        client.log_metric(ranking.run_id, "winner_test_accuracy", winner["test_accuracy"])
    onnx = None
    if cfg.export:
        t2 = time.time()
        onnx = export_model(ExportConfig(model_uri=winner["model_uri"], work_dir=cfg.work_dir, data_dir=cfg.data_dir,
                                         promote=winner["champion"]),
                            run_id=winner["run_id"], module=module, network=network, ds=ds, follow_champion=True)
        timings["export"] = time.time() - t2
        if ranking.run_id and onnx.model_uri:
            client.set_tag(ranking.run_id, "tans.onnx_model", onnx.model_uri)
    timings["total"] = time.time() - t0
    return QueryRecord(ranking=ranking, finetuned=tuple(results), winner=winner, onnx=onnx, timings=timings)
