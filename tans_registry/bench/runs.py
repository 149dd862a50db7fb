"""The benchmark's MLflow runs below a dataset's: one finished (dataset, seed) found again for --resume, and
one run per start and budget holding its fine-tuning curve."""
from __future__ import annotations

import json
import time
from dataclasses import asdict

from ..retrieval.starts import BN_POLICY, CALIB_IMAGES
from .config import BenchConfig


SEED_KEY_TAG = "tans.bench_key"  # what one dataset's seed was benchmarked with (--resume reuses a finished one)
SEED_ARTIFACT = "seed.json"


def seed_key(cfg: BenchConfig, seed: int, ds, encoder_version: str, idx, settings_used, base_run: str | None) -> str:
    """What one (dataset, seed) result depends on: the benchmark's settings but not where or how fast it runs,
    the fine-tuning recipe, the seed, the query data, the encoders, the zoo's index, the base supernet behind
    best_average, the preparation and LogME's image count. (Not the code itself: after a change to the
    protocol, benchmark without --resume.)"""
    import hashlib

    from ..retrieval.search import LOGME_IMAGES

    settings = {k: v for k, v in asdict(cfg).items() if k not in ("work_dir", "data_dir", "progress", "plots", "workers",
                                                                   "executor", "ray_address", "device", "resume",
                                                                   "seed", "seeds", "holdout", "query_data")}
    blob = json.dumps({"settings": settings, "seed": seed, "data": ds.fingerprint(), "encoders": encoder_version,
                       "zoo": [str(n) + "/" + str(v) for n, v in zip(idx.names.tolist(), idx.versions.tolist())],
                       "bn": BN_POLICY, "calib": CALIB_IMAGES, "logme_images": LOGME_IMAGES, "base": base_run,
                       "recipe": {k: v for k, v in asdict(settings_used).items()
                                  if k not in ("device", "workers", "seed", "patience")}},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def finished_seed(exp: str, key: str) -> dict | None:
    """The figures of a finished seed run benchmarked with ``key`` (the newest), or None."""
    import mlflow

    runs = mlflow.search_runs(experiment_ids=[exp], filter_string=f"tags.`{SEED_KEY_TAG}` = '{key}' and "
                              "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                              max_results=1, output_format="list")
    if not runs:
        return None
    return mlflow.artifacts.load_dict(f"{runs[0].info.artifact_uri.rstrip('/')}/{SEED_ARTIFACT}")


def log_curves(exp: str, parent_run: str, curves: list[dict], tags: dict) -> None:
    """One run per start and budget under ``parent_run``: validation accuracy by epoch (so the MLflow UI
    draws the fine-tuning curves), the kept epoch's test accuracy and the start's linear probe."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    client = MlflowClient()
    now = int(time.time() * 1000)
    for c in curves:
        run = client.create_run(exp, run_name=f"{c['start']} {c['budget']:g} ep",
                                tags=tags | {"mlflow.parentRunId": parent_run, "tans.start": c["start"],
                                             "tans.start_kind": c["kind"], "tans.model_uri": c.get("uri") or "",
                                             "tans.budget": f"{c['budget']:g}"})
        metrics = [Metric("val_accuracy", float(v), now, e) for e, v in enumerate(c["history"], start=1)]
        metrics += [Metric(k, float(c[k]), now, 0) for k in ("test_accuracy", "kept_val_accuracy", "probe_test_acc",
                                                            "seconds") if c.get(k) is not None]
        client.log_batch(run.info.run_id, metrics=metrics, tags=[RunTag("tans.preparation", json.dumps(c["prep"]))])
        client.set_terminated(run.info.run_id)
