"""``tans query``: which zoo network should a new dataset start from?

The dataset is embedded with the champion encoders (its backbone features of K images per class ->
query encoder), the cached zoo index is searched under the constraints (exact top-``shortlist`` by
retrieval score: cosine to the model embedding plus the encoders' ``dataset_weight`` times cosine to the
network's source-dataset embedding), and the accuracy predictor re-ranks the shortlist (TANS's
retrieve-then-rank). Each query is a run in `tans/queries`: the dataset's fingerprint, the
constraints, the encoder and index versions, and the ranked candidates as an artifact.

Fine-tuning the candidates (``--finetune``) is not built yet; this returns the ranked starting points.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import tracking
from .errors import ConfigError, TansError

RERANK = ("predictor", "none")


@dataclass(frozen=True)
class QueryConfig:
    data: str                                # dataset name, .npz archive, or image folder
    top_k: int = 5
    max_params: int | None = None
    max_flops: int | None = None
    exclude_datasets: tuple[str, ...] = ()   # e.g. the query's own source dataset, in a benchmark
    rerank: str = "predictor"                # or "none": retrieval order
    shortlist: int = 100                     # retrieved networks the predictor re-ranks
    rerank_groups: int | None = None         # ... of the first N groups among them; None: the encoders' setting
    k_per_class: int = 20                    # images per class in the query set (as in training)
    seed: int = 0
    work_dir: str | None = None
    data_dir: str | None = None
    log_run: bool = True

    def validate(self) -> None:
        if self.rerank not in RERANK:
            raise ConfigError(f"--rerank must be one of {', '.join(RERANK)}; got {self.rerank!r}")
        for name in ("top_k", "shortlist", "k_per_class"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1; got {getattr(self, name)}")
        if self.rerank_groups is not None and int(self.rerank_groups) < 0:
            raise ConfigError(f"rerank-groups must be >= 0 (0: every shortlisted network); got {self.rerank_groups}")


def load_query_models(client):
    """(encoder version, encoders, backbone) of `tans-encoders@champion`; a clear error without one."""
    import mlflow

    from .encoders.backbone import load_backbone
    from .encoders.train import BACKBONE_MODEL
    from .registry.embed import load_champion
    from .registry.index import ENCODERS_MODEL

    champ = load_champion(client, with_query_sets=False)
    if champ is None:
        raise TansError("no trained encoders are registered: run `tans encoders train`, then `tans index build`",
                        code="NO_ENCODERS")
    version, enc, _ = champ
    mv = client.get_model_version(ENCODERS_MODEL, version)
    bb_version = mv.tags.get("tans.backbone_version")
    if not bb_version:
        raise TansError(f"tans-encoders v{version} names no backbone (tag tans.backbone_version): retrain the "
                        "encoders with `tans encoders train`", code="NO_ENCODERS")
    bb = client.get_model_version(BACKBONE_MODEL, bb_version)
    backbone = load_backbone(Path(mlflow.artifacts.download_artifacts(bb.source)))
    return version, enc, backbone


@torch.no_grad()
def embed_dataset(enc, backbone, ds, k_per_class: int, seed: int) -> np.ndarray:
    """The dataset embedding of ``ds``: backbone features of up to K training images per class, pooled by
    the query encoder."""
    from .encoders.backbone import extract_features, sample_per_class

    feats = extract_features(backbone, ds.x_train[sample_per_class(ds, k_per_class, seed)])
    return enc.query(torch.from_numpy(feats)[None])[0].numpy()


@torch.no_grad()
def rank_candidates(enc, idx, q: np.ndarray, cfg: QueryConfig) -> list[dict]:
    """Retrieve under the constraints, re-rank with the predictor, keep ``top_k``; best first.

    The predictor orders the shortlisted networks of the first ``rerank_groups`` groups in retrieval
    order (0: the whole shortlist); the other shortlisted networks follow in retrieval order."""
    from .encoders.train import first_groups

    use_predictor = cfg.rerank == "predictor" and enc.predictor is not None
    hits = idx.search(q, k=cfg.shortlist if use_predictor else cfg.top_k, dataset_weight=enc.cfg.dataset_weight,
                      max_params=cfg.max_params, max_flops=cfg.max_flops,
                      exclude_datasets=list(cfg.exclude_datasets) or None)
    if use_predictor and hits:
        n_groups = rerank_groups(enc, cfg)
        keep = set(first_groups([h["group"] for h in hits], n_groups)) if n_groups else None
        pool = [h for h in hits if keep is None or h["group"] in keep]
        rows = [h["row"] for h in pool]
        qt = torch.from_numpy(q).float()[None].expand(len(rows), -1)
        pred = enc.predictor(qt, torch.from_numpy(idx.model_emb[rows]).float(),
                             torch.from_numpy(idx.topology[rows]).float()).numpy()
        for h, p in zip(pool, pred):
            h["predicted_accuracy"] = float(p)
        pool.sort(key=lambda h: -h["predicted_accuracy"])
        hits = pool + [h for h in hits if keep is not None and h["group"] not in keep]
    out = []
    for rank, h in enumerate(hits[: cfg.top_k], start=1):
        h = {k: v for k, v in h.items() if k != "row"}
        out.append({"rank": rank, **h, "model_uri": f"models:/{h['model']}/{h['version']}"})
    return out


def rerank_groups(enc, cfg: QueryConfig) -> int:
    """The query's ``rerank_groups``, else the one the encoders were validated with."""
    return int(cfg.rerank_groups) if cfg.rerank_groups is not None else int(enc.cfg.rerank_groups)


def run_query(cfg: QueryConfig) -> dict:
    """Embed the dataset, search the registry under the constraints, rank; log the query run."""
    import mlflow

    from .data import load_dataset
    from .registry.index import build_index

    cfg.validate()
    t0 = time.time()
    wd, _ = tracking.setup(cfg.work_dir)
    client = mlflow.MlflowClient()
    ds = load_dataset(cfg.data, data_dir=cfg.data_dir, seed=cfg.seed)  # bad input fails before any model loads
    version, enc, backbone = load_query_models(client)
    idx, idx_rec = build_index(cfg.work_dir)
    if idx.encoder_version != version:
        raise TansError(f"the zoo index was embedded by encoders {idx.encoder_version!r}, but the champion is "
                        f"v{version}: run `tans index build`", code="INDEX_STALE")
    t_embed = time.time()
    q = embed_dataset(enc, backbone, ds, cfg.k_per_class, cfg.seed)
    t_search = time.time()
    candidates = rank_candidates(enc, idx, q, cfg)
    t_done = time.time()
    if not candidates:
        limits = ", ".join(f"{k}={v}" for k, v in (("max_params", cfg.max_params), ("max_flops", cfg.max_flops),
                                                    ("exclude", ",".join(cfg.exclude_datasets) or None)) if v)
        raise TansError(f"no zoo network satisfies the constraints ({limits or 'none'}) among {len(idx)} "
                        "networks: loosen --max-params/--max-flops (`tans zoo list` shows the sizes)",
                        code="NO_CANDIDATES")
    record = {"dataset": {"name": ds.name, "fingerprint": ds.fingerprint(), "classes": ds.n_classes,
                          "train_images": int(len(ds.x_train)), "skipped_images": int(ds.n_skipped)},
              "encoder_version": version, "index_key": idx_rec["key"], "zoo_networks": len(idx),
              "constraints": {"max_params": cfg.max_params, "max_flops": cfg.max_flops,
                              "exclude_datasets": list(cfg.exclude_datasets)},
              "rerank": cfg.rerank if enc.predictor is not None else "none",
              "rerank_groups": rerank_groups(enc, cfg),
              "candidates": candidates,
              "seconds": {"load": t_embed - t0, "embed": t_search - t_embed, "search": t_done - t_search}}
    if cfg.log_run:
        record["run_id"] = _log_query_run(cfg, record, wd)
    return record


def _log_query_run(cfg: QueryConfig, record: dict, wd: Path) -> str:
    import mlflow

    exp = tracking.experiment_id("queries", wd)
    tags = {"tans.kind": "query", "tans.dataset": record["dataset"]["name"],
            "tans.fingerprint": record["dataset"]["fingerprint"], "tans.encoder_version": record["encoder_version"]}
    if tracking.PROJECT_RUN_ID:
        tags["tans.project_run"] = tracking.PROJECT_RUN_ID
    with mlflow.start_run(experiment_id=exp, run_name=f"query-{record['dataset']['name']}", tags=tags) as run:
        params = {k: v for k, v in asdict(cfg).items() if k not in ("work_dir", "data_dir", "log_run")}
        params["exclude_datasets"] = ",".join(cfg.exclude_datasets)
        mlflow.log_params(params | {"index_key": record["index_key"]})
        best = record["candidates"][0]
        mlflow.log_metrics({"candidates": len(record["candidates"]), "zoo_networks": record["zoo_networks"],
                            "best_source_accuracy": best["accuracy"]}
                           | ({"best_predicted_accuracy": best["predicted_accuracy"]}
                              if "predicted_accuracy" in best else {})
                           | {f"seconds_{k}": v for k, v in record["seconds"].items()})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "candidates.json"
            path.write_text(json.dumps(record["candidates"], indent=1))
            mlflow.log_artifact(str(path))
        return run.info.run_id
