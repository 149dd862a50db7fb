"""The benchmark's worker jobs: one start probed and fine-tuned at each budget
(:func:`tans_registry.finetune.starts.finetune_start`, shared with the transfer table), and a worker's share
of LogME-all (:func:`logme_group`)."""
from __future__ import annotations

import torch

from ..finetune.probe import features  # noqa: F401 (scripts/bench_costs.py reads it here)
from ..finetune.starts import finetune_start  # noqa: F401 (the benchmark's start job)


def logme_group(job: dict) -> dict[str, list[float]]:
    """A worker's share of LogME-all: every transferability score (LogME, LEEP, NCE:
    :func:`~tans_registry.retrieval.search.transfer_scores`, one forward pass each) of ``job["uris"]`` (one
    group's networks) on the dataset, each network prepared as fine-tuning starts from it (batch norm on
    ``job["x_calib"]``)."""
    import mlflow

    from ..retrieval.search import transfer_scores
    from ..retrieval.transferability import SCORES

    torch.set_num_threads(job["threads"])
    mlflow.set_tracking_uri(job["tracking_uri"])
    mlflow.set_registry_uri(job["tracking_uri"])
    out = transfer_scores(job["uris"], job["dataset"], job["seed"], job["device"], x_calib=job["x_calib"], kinds=SCORES)
    return {kind: v.tolist() for kind, v in out.items()}
