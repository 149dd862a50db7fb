"""A transfer record: one start fine-tuned at one budget on one task, as an MLflow run of `tans/transfer`.

The run is browsable in the UI (its validation accuracy by epoch is a metric, so the UI draws the curve) and
queryable by its tags: ``tans.kind`` = ``transfer``; ``tans.source`` (``table``: `tans zoo transfer`;
``query``: a `tans query --finetune`; ``bench``: a benchmark run); the task (``tans.task``,
``tans.task_dataset``, ``tans.task_fingerprint``, ``tans.task_classes``, ``tans.task_descriptor``: 22 pixel
statistics, ``tans.task_data``: how to load it again (a dataset name or path, seed and caps); never an image); the start (``tans.start``: its ``models:/`` URI, ``tans.start_group``,
``tans.start_dataset``); ``tans.budget``; ``tans.val_history`` (JSON, as the metric); ``tans.kept`` (``probe`` when a query kept its linear
probe, which validated better than the fine-tuned network); ``tans.transfer_key``
(what the record depends on, for ``--resume``), set last: a run without it is incomplete and never read.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

from .. import tracking

KEY_TAG = "tans.transfer_key"
SOURCES = ("table", "query", "bench")


@dataclass(frozen=True)
class Task:
    """What a record keeps of its task: names and statistics, never images."""

    name: str
    dataset: str           # the data it was loaded from (a dataset name, or a query's own label)
    fingerprint: str
    classes: int
    descriptor: tuple      # 22 pixel statistics (tans_registry.data.stats.pixel_descriptor)
    # how it was loaded (load_dataset's spec: a name of the data directory or a path, seed, max_train, max_test):
    # encoder training loads it again and checks the fingerprint; a path is a reference, not a copy
    data: tuple = ()

    @classmethod
    def of(cls, ds, spec: str | None = None, seed: int = 0, max_train: int | None = None,
           max_test: int | None = None) -> "Task":
        from ..data.stats import pixel_descriptor

        data = (("spec", str(spec or ds.name)), ("seed", int(seed)), ("max_train", max_train), ("max_test", max_test))
        return cls(name=ds.name, dataset=str(spec or ds.name), fingerprint=ds.fingerprint(), classes=int(ds.n_classes),
                   descriptor=tuple(round(float(v), 6) for v in pixel_descriptor(ds)), data=data)


def record_key(task: Task, start_uri: str, budget: float, settings: dict, source: str) -> str:
    blob = json.dumps({"task": task.fingerprint, "start": start_uri, "budget": float(budget), "source": source,
                       "settings": {k: v for k, v in settings.items() if k not in ("workers", "device")}},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def outcome_of(result: dict, budget: float) -> dict:
    """One budget's outcome from a :func:`~tans_registry.finetune.starts.finetune_start` result."""
    return result["budgets"][str(budget)] | {"n_train": result["n_train"], "n_val": result["n_val"],
                                              "probe_test_accuracy": result["probe"]["test_accuracy"]}


def write_record(exp_id: str, task: Task, start: dict, budget: float, outcome: dict, settings: dict, source: str,
                 embedding=None, encoder_version: str | None = None, parent_run: str | None = None) -> str:
    """Log one record; returns its run id. ``start``: its ``uri``, ``group``, ``dataset``; ``outcome``: ``history``
    (validation accuracy by epoch), ``val_accuracy`` (the kept epoch's), ``test_accuracy``, ``seconds``,
    ``best_epoch``, and where known ``n_train``, ``n_val``, ``probe_test_accuracy``; ``embedding``: the task's
    query embedding by the encoders ``encoder_version`` (a query's; the table's tasks are re-derived instead)."""
    import mlflow
    from mlflow.entities import Metric, Param

    from ..registry.codec import encode_embedding

    if source not in SOURCES:
        raise ValueError(f"unknown record source {source!r}; one of {', '.join(SOURCES)}")
    client = mlflow.MlflowClient()
    tags = {"tans.kind": "transfer", "tans.source": source, "tans.task": task.name, "tans.task_dataset": task.dataset,
            "tans.task_fingerprint": task.fingerprint, "tans.task_classes": str(task.classes),
            "tans.task_descriptor": json.dumps(list(task.descriptor), separators=(",", ":")),
            "tans.task_data": json.dumps(dict(task.data), separators=(",", ":")),
            "tans.start": start["uri"], "tans.start_group": start.get("group", ""),
            "tans.start_dataset": start.get("dataset", ""), "tans.budget": f"{float(budget):g}",
            "tans.val_history": json.dumps([float(v) for v in outcome["history"]], separators=(",", ":")),
            "tans.kept": str(outcome.get("kept", "finetuned"))}
    if embedding is not None:
        tags |= {"tans.task_embedding": encode_embedding(embedding), "tans.task_encoder": str(encoder_version)}
    if parent_run:
        tags["mlflow.parentRunId"] = parent_run
    run = client.create_run(exp_id, run_name=f"{task.name} <- {start.get('group', '')} @{float(budget):g}", tags=tags)
    rid = run.info.run_id
    now = int(time.time() * 1000)
    params = {k: v for k, v in settings.items() if k not in ("workers", "device")}
    params |= {k: outcome[k] for k in ("n_train", "n_val") if outcome.get(k) is not None}
    metrics = [Metric("val_accuracy", float(v), now, i + 1) for i, v in enumerate(outcome["history"])]
    metrics += [Metric(name, float(outcome[k]), now, 0) for name, k in (
        ("final_val_accuracy", "val_accuracy"), ("test_accuracy", "test_accuracy"), ("seconds", "seconds"),
        ("best_epoch", "best_epoch"), ("probe_test_accuracy", "probe_test_accuracy")) if outcome.get(k) is not None]
    client.log_batch(rid, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    client.set_tag(rid, KEY_TAG, record_key(task, start["uri"], budget, settings, source))
    client.set_terminated(rid)
    return rid


def read_records(exp_id: str, source: str | None = None) -> list[dict]:
    """Every complete record of the experiment (optionally of one source), as dicts."""
    import mlflow

    client = mlflow.MlflowClient()
    where = "tags.`tans.kind` = 'transfer'"
    if source is not None:
        if source not in SOURCES:
            raise ValueError(f"unknown record source {source!r}; one of {', '.join(SOURCES)}")
        where += f" and tags.`tans.source` = '{source}'"
    runs = tracking.paged(lambda n, token: client.search_runs([exp_id], filter_string=where, max_results=n,
                                                              order_by=["attributes.start_time DESC"],
                                                              page_token=token), page_size=5000)
    out, seen = [], set()
    for r in runs:
        t, m = r.data.tags, r.data.metrics
        if KEY_TAG not in t or t[KEY_TAG] in seen:  # cut short before its key (never read), or written again
            continue
        seen.add(t[KEY_TAG])
        out.append({"run_id": r.info.run_id, "key": t[KEY_TAG], "source": t.get("tans.source"),
                    "task": t.get("tans.task"), "task_dataset": t.get("tans.task_dataset"),
                    "task_fingerprint": t.get("tans.task_fingerprint"),
                    "task_classes": int(t.get("tans.task_classes", 0)),
                    "task_descriptor": json.loads(t.get("tans.task_descriptor", "[]")),
                    "task_data": json.loads(t.get("tans.task_data", "{}")),
                    "start": t.get("tans.start"), "start_group": t.get("tans.start_group"),
                    "start_dataset": t.get("tans.start_dataset"), "budget": float(t.get("tans.budget", "nan")),
                    "val_history": json.loads(t.get("tans.val_history", "[]")), "kept": t.get("tans.kept", "finetuned"),
                    "val_accuracy": m.get("final_val_accuracy"), "test_accuracy": m.get("test_accuracy"),
                    "probe_test_accuracy": m.get("probe_test_accuracy"), "seconds": m.get("seconds"),
                    "task_embedding": t.get("tans.task_embedding"), "task_encoder": t.get("tans.task_encoder"),
                    "head_first": r.data.params.get("head_first")})  # the recipe ("True"/"False"; None: not logged)
    return out
