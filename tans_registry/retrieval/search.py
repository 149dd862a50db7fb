"""``tans query``: which zoo network should a new dataset start from?

The dataset is embedded with the champion encoders (its backbone features of K images per class ->
query encoder), the cached zoo index is searched under the constraints (exact top-``shortlist`` by
retrieval score: cosine to the model embedding plus the encoders' ``dataset_weight`` times cosine to the
network's source-dataset embedding), and the accuracy predictor re-ranks the shortlist with the one
policy of :mod:`.rerank` (TANS's retrieve-then-rank). Each query is a run in `tans/queries`: the
dataset's fingerprint, the constraints, the encoder and index versions, and the ranked candidates as an
artifact.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from .. import tracking
from ..data import load_dataset
from ..errors import TansError
from ..registry.index import ZooIndex, load_index
from .config import Candidate, QueryConfig, QueryRecord
from .embed import Champion, embed_dataset, load_champion
from .rerank import RerankPolicy, rerank_list


@torch.no_grad()
def rank_candidates(champ: Champion, idx: ZooIndex, q: np.ndarray, cfg: QueryConfig) -> list[Candidate]:
    """Retrieve under the constraints, re-rank with the predictor (:func:`.rerank.rerank_list`), keep
    ``top_k``; best first."""
    enc = champ.encoders
    policy = RerankPolicy.of(enc.cfg, cfg.shortlist, cfg.rerank_groups)
    use_predictor = cfg.rerank == "predictor" and enc.predictor is not None
    hits = idx.search(q, k=policy.shortlist if use_predictor else cfg.top_k, dataset_weight=enc.cfg.dataset_weight,
                      max_params=cfg.max_params, max_flops=cfg.max_flops,
                      exclude_datasets=list(cfg.exclude_datasets) or None)
    predicted: dict[int, float] = {}
    if use_predictor and hits:
        def predict(positions: np.ndarray) -> np.ndarray:
            rows = [hits[p]["row"] for p in positions]
            qt = torch.from_numpy(q).float()[None].expand(len(rows), -1)
            return enc.predictor(qt, torch.from_numpy(idx.model_emb[rows]).float(),
                                 torch.from_numpy(idx.topology[rows]).float()).numpy()

        order, predicted = rerank_list([h["group"] for h in hits], predict, policy)
        hits = [hits[i] | {"position": int(i)} for i in order]
    out = []
    for rank, h in enumerate(hits[: cfg.top_k], start=1):
        out.append(Candidate(rank=rank, model=h["model"], version=h["version"], group=h["group"],
                             dataset=h["dataset"], accuracy=h["accuracy"], n_params=h["n_params"],
                             flops=h["flops"], score=h["score"], model_uri=f"models:/{h['model']}/{h['version']}",
                             predicted_accuracy=predicted.get(h.get("position", -1))))
    return out


def query(cfg: QueryConfig) -> QueryRecord:
    """Embed the dataset, search the registry under the constraints, rank; log the query run."""
    t0 = time.time()
    wd, _ = tracking.setup(cfg.work_dir)
    ds = load_dataset(cfg.data, data_dir=cfg.data_dir, seed=cfg.seed)  # bad input fails before any model loads
    champ = load_champion()
    idx, idx_rec = load_index(wd)
    if idx.encoder_version != champ.version:
        raise TansError(f"the zoo index was embedded by encoders {idx.encoder_version!r}, but the champion is "
                        f"v{champ.version}: run `tans index build`", code="INDEX_STALE")
    t_embed = time.time()
    k = cfg.k_per_class or champ.encoders.cfg.k_per_class
    q = embed_dataset(champ, ds, k, cfg.seed)
    t_search = time.time()
    candidates = rank_candidates(champ, idx, q, cfg)
    t_done = time.time()
    if not candidates:
        limits = ", ".join(f"{k}={v}" for k, v in (("max_params", cfg.max_params), ("max_flops", cfg.max_flops),
                                                    ("exclude", ",".join(cfg.exclude_datasets) or None)) if v)
        raise TansError(f"no zoo network satisfies the constraints ({limits or 'none'}) among {len(idx)} "
                        "networks: loosen --max-params/--max-flops (`tans zoo list` shows the sizes)",
                        code="NO_CANDIDATES")
    policy = RerankPolicy.of(champ.encoders.cfg, cfg.shortlist, cfg.rerank_groups)
    record = QueryRecord(
        dataset={"name": ds.name, "fingerprint": ds.fingerprint(), "classes": ds.n_classes,
                 "train_images": int(len(ds.x_train)), "skipped_images": int(ds.n_skipped)},
        encoder_version=champ.version, index_key=idx_rec["key"], zoo_networks=len(idx),
        constraints={"max_params": cfg.max_params, "max_flops": cfg.max_flops,
                     "exclude_datasets": list(cfg.exclude_datasets)},
        rerank=cfg.rerank if champ.encoders.predictor is not None else "none",
        shortlist=policy.shortlist, rerank_groups=policy.groups, k_per_class=k, candidates=tuple(candidates),
        seconds={"load": t_embed - t0, "embed": t_search - t_embed, "search": t_done - t_search})
    if cfg.log_run:
        record = replace(record, run_id=_log_query_run(cfg, record, wd))
    return record


def _log_query_run(cfg: QueryConfig, record: QueryRecord, wd: Path) -> str:
    import mlflow

    exp = tracking.experiment_id("queries", wd)
    tags = {"tans.kind": "query", "tans.dataset": record.dataset["name"],
            "tans.fingerprint": record.dataset["fingerprint"], "tans.encoder_version": record.encoder_version}
    if tracking.PROJECT_RUN_ID:
        tags["tans.project_run"] = tracking.PROJECT_RUN_ID
    with mlflow.start_run(experiment_id=exp, run_name=f"query-{record.dataset['name']}", tags=tags) as run:
        params = {k: v for k, v in asdict(cfg).items() if k not in ("work_dir", "data_dir", "log_run")}
        params["exclude_datasets"] = ",".join(cfg.exclude_datasets)
        params |= {"shortlist": record.shortlist, "rerank_groups": record.rerank_groups,
                   "k_per_class": record.k_per_class}
        mlflow.log_params(params | {"index_key": record.index_key})
        best = record.candidates[0]
        mlflow.log_metrics({"candidates": len(record.candidates), "zoo_networks": record.zoo_networks,
                            "best_source_accuracy": best.accuracy}
                           | ({"best_predicted_accuracy": best.predicted_accuracy}
                              if best.predicted_accuracy is not None else {})
                           | {f"seconds_{k}": v for k, v in record.seconds.items()})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "candidates.json"
            path.write_text(json.dumps([asdict(c) for c in record.candidates], indent=1))
            mlflow.log_artifact(str(path))
        return run.info.run_id
