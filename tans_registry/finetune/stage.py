"""Fine-tune a query's top N candidates (in parallel processes when cores allow), pick the winner by
validation accuracy, register it as ``tans-finetuned.<dataset>`` with its lineage.

Each candidate becomes a child run of the query's run in `tans/queries` (settings, per-epoch validation
accuracy, validation and test accuracy, its zoo parent); the winner's MLflow model folder is logged
into its run and registered from there (tags: zoo parent version, query run, fine-tuning settings,
validation and test accuracy). Workers only read the registry; every write happens here, afterwards.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from .. import tracking
from ..errors import TansError
from ..executor import Executor, on_task_device, parallel_map, ray_session
from ..registry import models as registry_models
from .candidate import finetune_candidate
from .config import CandidateResult, FinetuneSettings
from .network import rebuild, save_model

ARTIFACT = "finetuned"
log = logging.getLogger("tans_registry")


def _candidate_or_error(job: dict) -> dict:
    """:func:`finetune_candidate`, or ``{"error": message}`` when the candidate cannot be loaded (its
    artifacts missing or unreadable): the query goes on with the others."""
    from ..errors import TansError

    try:
        return finetune_candidate(job)
    except TansError as exc:
        return {"error": str(exc)}


def _candidate_anywhere(job: dict) -> dict:
    """A Ray task's :func:`_candidate_or_error`: the kept weights come back in the result (the task may run
    on another machine, where the parent's folder does not exist), and the parent writes them."""
    with tempfile.TemporaryDirectory() as tmp:
        out = _candidate_or_error(job | {"out": str(Path(tmp) / "kept.safetensors")})
        if "error" not in out:
            import ray

            out["weights"] = (Path(tmp) / "kept.safetensors").read_bytes()
            out["ray_task"] = ray.get_runtime_context().get_task_id()
    return out


def _run_jobs(jobs: list[dict], workers: int, executor: Executor) -> list[dict]:
    if not executor.is_ray:
        return list(parallel_map(_candidate_or_error, jobs, workers))
    with ray_session(executor.ray_address):
        jobs, gpus = on_task_device(jobs, jobs[0]["settings"].get("device"))
        outs = list(parallel_map(_candidate_anywhere, jobs, workers, executor, threads=jobs[0]["threads"], gpus=gpus))
    for job, out in zip(jobs, outs):
        if "weights" in out:
            Path(job["out"]).write_bytes(out.pop("weights"))
    return outs


def finetune_top(candidates: list, ds, settings: FinetuneSettings, data_spec: dict, query_run: str | None,
                 work_dir: Path, executor: Executor | None = None) -> tuple[list[CandidateResult], dict | None]:
    """Fine-tune ``candidates`` (ranked :class:`~tans_registry.retrieval.config.Candidate` rows) on ``ds``
    in local processes or (``executor``) as Ray tasks, one a candidate, one CPU each, at most
    ``settings.workers`` at once when given; returns their results (rank order; each logged as an MLflow
    model in its run) and the registered winner."""
    import mlflow

    executor = executor or Executor()
    if executor.is_ray:
        workers, threads = settings.workers or len(candidates), 1
    else:
        workers = settings.workers or min(len(candidates), os.cpu_count() or 1)
        threads = max(1, torch.get_num_threads() // max(1, min(workers, len(candidates))))
    uri = mlflow.get_tracking_uri()
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [{"uri": c.model_uri, "classes": list(ds.classes), "x_train": ds.x_train, "y_train": ds.y_train,
                 "x_test": ds.x_test, "y_test": ds.y_test, "settings": asdict(settings), "tracking_uri": uri,
                 "threads": threads if workers > 1 or executor.is_ray else torch.get_num_threads(),
                 "out": str(Path(tmp) / f"c{i}.safetensors")}
                for i, c in enumerate(candidates)]
        outs = _run_jobs(jobs, workers, executor)
        failed = [(c, out["error"]) for c, out in zip(candidates, outs) if "error" in out]
        for c, why in failed:
            log.warning("candidate %s skipped: %s", c.model_uri, why)
        if len(failed) == len(candidates):
            raise TansError(f"none of the {len(candidates)} candidates could be fine-tuned ({failed[0][1]}); check the "
                            "zoo's artifacts (`tans zoo list`) or fine-tune more candidates (--finetune)",
                            code="FINETUNE_FAILED")
        kept = [i for i, out in enumerate(outs) if "error" not in out]
        candidates, outs, jobs = [candidates[i] for i in kept], [outs[i] for i in kept], [jobs[i] for i in kept]
        results, networks, modules = [], [], []
        for c, out, job in zip(candidates, outs, jobs):
            network = _network(c, out, ds, settings, data_spec, query_run)
            module = rebuild(network, load_file(job["out"]))
            results.append(_log_candidate(c, out, settings, query_run, work_dir, network, module, ds))
            networks.append(network)
            modules.append(module)
    best = max(range(len(results)), key=lambda i: (results[i].val_accuracy, -results[i].rank))
    winner = _register_winner(candidates[best], results[best], networks[best], modules[best], ds, settings, query_run)
    return results, winner


def _network(c, out: dict, ds, settings: FinetuneSettings, data_spec: dict, query_run: str | None) -> dict:
    """The fine-tuned network's ``network.json``: what rebuilds it, its preprocessing, its lineage."""
    info = out["info"]
    data = data_spec["data"]
    if Path(str(data)).exists():  # a path: absolute, so that a later `tans export` elsewhere finds it
        data = str(Path(str(data)).resolve())
    return {"arch": info["arch"], "arch_hash": info["arch_hash"], "supernet": info["supernet"],
            "classes": list(ds.classes), "input_size": info["input_size"], "mean": info["mean"], "std": info["std"],
            "dataset": ds.name, "data": data, "data_dir": data_spec.get("data_dir"), "seed": data_spec.get("seed", 0),
            "fingerprint": ds.fingerprint(), "zoo_parent": c.model_uri, "query_run": query_run or "",
            "settings": asdict(settings), "val_accuracy": out["val_accuracy"], "test_accuracy": out["test_accuracy"]}


def _log_candidate(c, out: dict, settings: FinetuneSettings, query_run: str | None, work_dir: Path, network: dict,
                   module, ds) -> CandidateResult:
    import mlflow

    client = mlflow.MlflowClient()
    exp = tracking.experiment_id("queries", work_dir)
    tags = {"tans.kind": "finetune", "tans.zoo_parent": c.model_uri, "tans.rank": str(c.rank), "tans.kept": out["kept"]}
    tags["tans.device"] = str(out.get("device", "cpu"))
    if out.get("ray_task"):  # where it ran: the Ray task, as the cluster's logs name it
        tags["tans.ray_task"] = out["ray_task"]
    if query_run:
        tags["mlflow.parentRunId"] = query_run
    run = client.create_run(exp, run_name=f"finetune-{c.model}-v{c.version}", tags=tags)
    rid = run.info.run_id
    for k, v in asdict(settings).items():
        client.log_param(rid, k, v)
    for epoch, acc in enumerate(out["history"], start=1):
        client.log_metric(rid, "val_accuracy", acc, step=epoch)
    for k in ("val_accuracy", "test_accuracy", "epochs", "steps", "seconds", "best_epoch"):
        client.log_metric(rid, f"final_{k}", float(out[k]))
    if out.get("probe_val_accuracy") is not None:
        client.log_metric(rid, "probe_val_accuracy", float(out["probe_val_accuracy"]))
    client.log_metric(rid, "n_train", out["n_train"])
    client.log_metric(rid, "n_val", out["n_val"])
    with tempfile.TemporaryDirectory() as tmp:  # every candidate's model stays loadable (runs:/<run>/finetuned)
        save_model(Path(tmp) / ARTIFACT, module, network, ds.x_train[:4])
        client.log_artifacts(rid, str(Path(tmp) / ARTIFACT), ARTIFACT)
    client.set_terminated(rid)
    return CandidateResult(rank=c.rank, parent=c.model_uri, val_accuracy=out["val_accuracy"],
                           test_accuracy=out["test_accuracy"], epochs=round(out["epochs"], 3),
                           best_epoch=out["best_epoch"], stopped_early=out["stopped_early"], steps=out["steps"],
                           seconds=round(out["seconds"], 2), history=tuple(out["history"]), kept=out["kept"], run_id=rid,
                           model_uri=f"runs:/{rid}/{ARTIFACT}")


def _register_winner(c, result: CandidateResult, network: dict, module, ds, settings: FinetuneSettings,
                     query_run: str | None) -> dict:
    tags = {"tans.zoo_parent": c.model_uri, "tans.query_run": query_run or "", "tans.dataset": ds.name,
            "tans.fingerprint": ds.fingerprint(), "tans.settings": json.dumps(asdict(settings), separators=(",", ":")),
            "tans.test_accuracy": f"{result.test_accuracy:.6f}", "tans.arch_hash": network["arch_hash"],
            "tans.finetune_run": result.run_id, "tans.kept": result.kept}
    if result.kept == "probe":
        how = ("kept as the linear probe (its frozen features with a logistic-regression head), which validated "
               f"better than every one of the {result.epochs:g} fine-tuned epochs")
    else:
        how = f"after {result.epochs:g} epochs{' (stopped early)' if result.stopped_early else ''}"
    description = (f"Fine-tuned winner for `{ds.name}` ({ds.n_classes} classes), started from `{c.model_uri}` "
                   f"(rank {c.rank} of query run `{query_run}`): validation accuracy {result.val_accuracy:.4f}, test "
                   f"accuracy {result.test_accuracy:.4f}, {how}.")
    reg = registry_models.register_finetuned(ds.name, result.run_id, ARTIFACT, result.val_accuracy, tags, description)
    return reg | {"rank": c.rank, "parent": c.model_uri, "val_accuracy": result.val_accuracy,
                  "test_accuracy": result.test_accuracy, "module": module,
                  "network": network, "run_id": result.run_id}
