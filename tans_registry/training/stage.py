"""``tans encoders train``: meta-contrastive training of the encoders on the zoo, tracked in MLflow.

The zoo's groups (re-derived from the data directory, or a snapshot) are split by source dataset into
training and validation; a feature backbone learns from the training datasets only; the encoders are
trained (:mod:`.loop`) with early stopping on the validation protocols; the run logs the parameters,
per-evaluation metrics, the baselines, the encoders and the backbone as MLflow models
(:mod:`~tans_registry.encoders.flavour`), the query sets and a 2-D embedding map; the registry then
registers both and moves ``tans-encoders@champion`` only when the selection score improves.
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .. import tracking
from ..encoders.backbone import extract_features, sample_per_class, train_backbone
from ..encoders.flavour import save_backbone_model, save_encoders_model
from ..encoders.models import TansEncoders, pad_sets
from ..registry.models import register_encoders
from ..retrieval.embed import QUERY_SETS
from ..validation.baselines import best_average_heuristic, pixel_heuristic, size_heuristic
from ..validation.evaluate import embed_models, evaluate, selection_metric, selection_score
from ..zoo.generalist import GROUP as GENERALIST
from ..zoo.meta import MetaGroup, load_generalist_data, load_meta_groups, load_meta_snapshot, split_by_dataset
from ..device import resolve as resolve_device
from .config import EncoderTrainConfig, EncoderTrainRecord
from .loop import fit
from .transfer_fit import fit_transfer, gather

log = logging.getLogger("tans_registry")


def prepare(cfg: EncoderTrainConfig, exp_zoo: str):
    """Groups with their query-set features, the backbone, and the train/val split."""
    groups = load_meta_snapshot(cfg.snapshot, cfg.data_dir) if cfg.snapshot else load_meta_groups(exp_zoo, cfg.data_dir)
    train, val, val_names = split_by_dataset(groups, list(cfg.val_datasets) if cfg.val_datasets else None, cfg.seed)
    # the backbone learns from the training groups' whole source datasets, never the validation ones
    sources = {g.dataset: g.source if g.source is not None else g.data for g in train}
    backbone = train_backbone(list(sources.values()), epochs=cfg.backbone_epochs, seed=cfg.seed, device=cfg.device)
    for g in groups:
        g.features = extract_features(backbone, g.data.x_train[sample_per_class(g.data, cfg.encoder.k_per_class, cfg.seed)])
    if not cfg.snapshot:  # the generalist is indexed, never trained on: its query set only (see zoo/generalist.py)
        pooled = load_generalist_data(exp_zoo, groups)
        if pooled is not None:
            k = cfg.encoder.k_per_class  # as every group's (and every query's): K images of each of its classes
            extra = extract_features(backbone, pooled.x_train[sample_per_class(pooled, k, cfg.seed)])
            return train, val, val_names, backbone, {GENERALIST: extra}
    return train, val, val_names, backbone, {}


def train_encoders(cfg: EncoderTrainConfig) -> EncoderTrainRecord:
    """Train, validate, log and register the encoders (`champion` moves only when validation improves)."""
    resolve_device(cfg.device)  # cuda asked for and absent: refused before anything is read or written
    wd, _ = tracking.setup(cfg.work_dir)
    return train_prepared(cfg, prepare(cfg, tracking.experiment_id("zoo", wd)))


def train_prepared(cfg: EncoderTrainConfig, prepared) -> EncoderTrainRecord:
    """:func:`train_encoders` on ``prepared`` (:func:`prepare`'s result for the same zoo, data, seed, K and
    validation datasets), so that the ablations share one backbone and set of query features; the
    preparation's time is not counted."""
    import mlflow

    wd, _ = tracking.setup(cfg.work_dir)
    exp_enc = tracking.experiment_id("encoders", wd)
    t0 = time.time()
    train, val, val_names, backbone, indexed_only = prepared
    torch.manual_seed(cfg.seed)
    enc = TansEncoders(replace(cfg.encoder, functional_dim=int(train[0].functional.shape[1])))
    untrained = evaluate(enc, val, train)
    baseline = pixel_heuristic(val, train)
    by_size = size_heuristic(val)
    by_average = best_average_heuristic(val, train)
    tags = {"tans.kind": "encoders"} | ({"tans.project_run": tracking.PROJECT_RUN_ID} if tracking.PROJECT_RUN_ID else {})
    with mlflow.start_run(experiment_id=exp_enc, run_name=f"encoders-{cfg.loss}-{cfg.encoder.pooling}", tags=tags) as run:
        mlflow.log_params(cfg.to_params() | {"val_datasets_used": ",".join(val_names), "n_train_groups": len(train),
                                             "train_datasets": ",".join(sorted({g.dataset for g in train})),
                                             "n_val_groups": len(val), "backbone_device": str(resolve_device(cfg.device))})
        mlflow.log_metrics({f"untrained_{k}": v for k, v in untrained.items() if np.isfinite(v)}
                           | {f"pixel_heuristic_{k}": v for k, v in baseline.items() if np.isfinite(v)}
                           | {f"size_heuristic_{k}": v for k, v in by_size.items() if np.isfinite(v)}
                           | {f"best_average_{k}": v for k, v in by_average.items() if np.isfinite(v)}, step=0)
        best_report = fit(enc, train, val, cfg, on_eval=lambda step, m: mlflow.log_metrics(
            {k: v for k, v in m.items() if np.isfinite(v)}, step=step))
        mlflow.log_metrics({f"best_{k}": v for k, v in best_report.items() if np.isfinite(v)})
        transfer = {} if cfg.snapshot or not cfg.transfer_sources else _transfer(enc, cfg, train + val, indexed_only,
                                                                                 backbone, wd)
        if transfer:
            mlflow.log_params({"transfer_variant": transfer["variant"], "transfer_why": transfer["why"][:250],
                               "transfer_records": transfer["records"], "transfer_tasks": transfer["tasks"],
                               "transfer_skipped": transfer["skipped"], "transfer_chosen_loss": enc.cfg.transfer_loss,
                               "transfer_chosen_source": enc.cfg.transfer_source})
            mlflow.log_metrics({f"transfer_selection_tau_{k.replace('-', '_')}": v
                                for k, v in transfer["selection_tau"].items() if np.isfinite(v)}
                               | {"transfer_train_tau": transfer["train_tau"]})
        example = train[0].data.x_train[:4] if train[0].data is not None else None
        with tempfile.TemporaryDirectory() as tmp:
            save_encoders_model(Path(tmp) / "encoders", enc, backbone, example)
            save_backbone_model(Path(tmp) / "backbone", backbone, example)
            _save_query_sets(Path(tmp) / QUERY_SETS, train + val, indexed_only)
            _embedding_map(enc, train + val, Path(tmp) / "embedding_map.png")
            mlflow.log_artifacts(tmp)
        registered = {}
        if cfg.register:
            registered = register_encoders(run.info.run_id, selection_score(best_report), selection_metric(best_report),
                                           tuple(val_names), promote=cfg.promote)
    return EncoderTrainRecord(run_id=run.info.run_id, best=best_report, untrained=untrained, pixel_heuristic=baseline,
                              size_heuristic=by_size, best_average=by_average, val_datasets=tuple(val_names), seconds=time.time() - t0,
                              transfer=transfer, **registered)


def _transfer(enc: TansEncoders, cfg: EncoderTrainConfig, groups: list[MetaGroup], indexed_only: dict, backbone,
              wd) -> dict:
    """Learn the transfer predictor from the transfer table's records (:mod:`.transfer_fit`); {} when the table
    holds none of ``cfg.transfer_sources``."""
    from ..transfer.records import read_records

    records = [r for src in cfg.transfer_sources for r in read_records(tracking.experiment_id("transfer", wd), src)
               if r["task_dataset"] not in cfg.transfer_exclude]
    if not records:
        log.info("the transfer table holds no records of %s: no transfer predictor (`tans zoo transfer` writes them)",
                 ", ".join(cfg.transfer_sources))
        return {}
    ex = gather(enc, records, _starts(groups, indexed_only, tracking.experiment_id("zoo", wd)), backbone, cfg.data_dir,
                enc.cfg.k_per_class, cfg.seed)
    if ex is None or len(ex.q) < 2:
        log.warning("the transfer table's %d records give %s usable task(s) (a task's data or its starts not found "
                    "again, or only probes kept): no transfer predictor", len(records), 0 if ex is None else len(ex.q))
        return {}
    return fit_transfer(enc, ex, cfg.seed)


def _starts(groups: list[MetaGroup], indexed_only: dict, exp_zoo: str) -> dict[str, dict]:
    """Model URI -> what the transfer predictor reads of each current zoo version (its group's query set too)."""
    from ..registry.names import model_uri
    from ..registry.register import current_zoo_versions
    from ..zoo.store import finished_group_runs, load_functional_embeddings, read_table

    by_name = {g.name: g for g in groups}
    general = None
    run = finished_group_runs(exp_zoo).get(GENERALIST)
    if run is not None and GENERALIST in indexed_only:
        rows = read_table(run.info.run_id)["networks"]
        general = {"topology": np.array([r["topology"] for r in rows], np.float32),
                   "functional": load_functional_embeddings(run.info.run_id).astype(np.float32),
                   "accuracy": np.array([r["accuracy"] for r in rows], np.float32),
                   "n_params": np.array([r["n_params"] for r in rows], np.float64), "features": indexed_only[GENERALIST]}
    out = {}
    for v in current_zoo_versions():
        group, i = v.tags.get("tans.group"), int(v.tags.get("tans.index", -1))
        g = by_name.get(group)
        if g is not None and 0 <= i < len(g.accuracy):
            out[model_uri(v.name, v.version)] = {"topology": g.topology[i], "functional": g.functional[i],
                                                 "accuracy": float(g.accuracy[i]), "features": g.features,
                                                 "n_params": float(g.n_params[i]) if g.n_params is not None else 1.0}
        elif group == GENERALIST and general is not None and 0 <= i < len(general["accuracy"]):
            out[model_uri(v.name, v.version)] = {k: (val if k == "features" else val[i]) for k, val in general.items()}
    return out


def _save_query_sets(path: Path, groups: list[MetaGroup], extra: dict[str, np.ndarray] | None = None) -> None:
    """The query sets' features by group (`tans index build` embeds the zoo's datasets from them), and those of
    groups indexed but not trained on (``extra``: the generalist)."""
    np.savez(path, **{f"features/{g.name}": g.features for g in groups},
             **{f"features/{name}": f for name, f in (extra or {}).items()})


def _embedding_map(enc: TansEncoders, groups: list[MetaGroup], path: Path) -> None:
    """2-D PCA map of dataset embeddings (stars) and model embeddings (dots), coloured by dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with torch.no_grad():
        m, owner = embed_models(enc, groups)
        q = enc.query(*pad_sets([g.features for g in groups]))
    pts = torch.cat([m, q]).numpy()
    pts = pts - pts.mean(0)
    _, _, vt = np.linalg.svd(pts, full_matrices=False)
    xy = pts @ vt[:2].T
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab20")
    for i, g in enumerate(groups):
        sel = owner == i
        ax.scatter(xy[: len(owner)][sel, 0], xy[: len(owner)][sel, 1], s=8, color=cmap(i % 20), alpha=0.6)
        ax.scatter(*xy[len(owner) + i], marker="*", s=160, color=cmap(i % 20), edgecolor="k", label=g.name)
    ax.set_title("dataset (stars) and model (dots) embeddings, PCA")
    if len(groups) <= 20:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
