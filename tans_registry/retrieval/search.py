"""The ranking half of ``tans query``: which zoo networks should a new dataset start from?

The dataset is embedded with the champion encoders (its backbone features of K images per class ->
query encoder); the cached zoo index is filtered by the constraints first (parameters, FLOPs, measured
ONNX Runtime latency), then searched (exact top-``shortlist`` by retrieval score: cosine to the model
embedding plus the encoders' ``dataset_weight`` times cosine to the network's source-dataset
embedding); the shortlist is re-ranked with the one policy of :mod:`.rerank`, by the accuracy predictor
or by LogME (:mod:`.logme`: forward passes of the re-ranked networks only, over the dataset's images).
Each query is a run in `tans/queries`: the dataset's fingerprint, the constraints, the encoder and index
versions, and the ranked candidates as an artifact.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from .. import tracking
from ..data import load_dataset
from ..device import resolve as resolve_device
from ..encoders.backbone import sample_per_class
from ..errors import TansError
from ..registry.index import ZooIndex, load_index
from ..registry.names import model_uri
from ..registry.pyfunc import load_networks
from ..zoo.generalist import is_generalist
from ..zoo.measure import penultimate
from ..zoo.tensors import to_tensor
from .config import HYBRID_K, HYBRID_MIN_GROUPS, HYBRID_SCORE, VAL_FRACTION, Candidate, RankConfig, RankRecord
from .embed import Champion, embed_dataset, load_champion
from .logme import logme
from .transferability import SCORES, hybrid_shortlist, leep, nce
from .rerank import RerankPolicy, rerank_list
from .starts import calibration_set, prepare

log = logging.getLogger("tans_registry")
# At most this many training images (stratified) feed each network's LogME: one forward pass of 256 images
# costs ~0.3 s a network on 2 cores, so LogME over every network of a 2,250-network zoo takes minutes, not an
# hour (500 before session 7; set for cost, before any benchmark figure existed).
LOGME_IMAGES = 256


@torch.no_grad()
def transfer_scores(uris: list[str], ds, seed: int, device: str | None = "auto", x_calib: np.ndarray | None = None,
                    val_fraction: float = VAL_FRACTION, kinds: tuple[str, ...] = ("logme",)) -> dict[str, np.ndarray]:
    """Transferability of each network (by model URI) to the dataset, by each score of ``kinds`` (LogME of its
    penultimate features; LEEP and NCE of its own source head: :mod:`.transferability`), on up to
    ``LOGME_IMAGES`` training images (stratified). Each network is prepared as fine-tuning starts from it
    (:func:`.starts.prepare`: batch norm re-estimated on ``x_calib``, by default the
    :func:`.starts.calibration_set` of ``ds`` for ``seed``) and preprocessed its own way: one forward pass
    each for the statistics and one for the scores, on ``device``."""
    unknown = [k for k in kinds if k not in SCORES]
    if unknown:
        raise ValueError(f"unknown transferability score(s) {unknown}; choose from {', '.join(SCORES)}")
    dev = resolve_device(device)
    k = max(1, LOGME_IMAGES // ds.n_classes)
    pick = sample_per_class(ds, k, seed)
    images, y = ds.x_train[pick], ds.y_train[pick]
    if x_calib is None:
        x_calib = calibration_set(ds.x_train, ds.y_train, val_fraction, seed)
    out: dict[str, list[float]] = {kind: [] for kind in kinds}
    for module, network in load_networks(uris):
        module, _ = prepare(module, network["mean"], network["std"], ds.n_classes, x_calib, seed, dev, head=False)
        x = to_tensor(images, network["mean"], network["std"]).to(dev)
        feats = torch.cat([penultimate(module, x[i:i + 256]) for i in range(0, len(x), 256)])
        if "logme" in out:
            out["logme"].append(logme(feats.cpu().numpy(), y))
        if "leep" in out or "nce" in out:  # the source head, kept (prepare(head=False)), on the same features
            probs = torch.softmax(module.classifier(feats).double(), dim=1).cpu().numpy()
            if "leep" in out:
                out["leep"].append(leep(probs, y))
            if "nce" in out:
                out["nce"].append(nce(probs.argmax(1), y))
    return {kind: np.asarray(v) for kind, v in out.items()}


def logme_scores(uris: list[str], ds, seed: int, device: str | None = "auto", x_calib: np.ndarray | None = None,
                 val_fraction: float = VAL_FRACTION) -> np.ndarray:
    """LogME of each network: :func:`transfer_scores` with ``kinds=("logme",)``."""
    return transfer_scores(uris, ds, seed, device, x_calib, val_fraction)["logme"]


@torch.no_grad()
def learned_scores(enc, idx: ZooIndex, q: np.ndarray, rows) -> np.ndarray | None:
    """The learned ranking's score of index ``rows`` for the query embedding ``q``: the transfer predictor's
    (learnt from fine-tuned accuracies) where the encoders have one, else the accuracy predictor's; None with
    neither."""
    rows = np.asarray(rows, dtype=np.int64)
    qt = torch.from_numpy(np.asarray(q, dtype=np.float32))[None].expand(len(rows), -1)
    m = torch.from_numpy(idx.model_emb[rows]).float()
    topo = torch.from_numpy(idx.topology[rows]).float()
    if enc.transfer is not None:
        source = torch.nn.functional.normalize(torch.from_numpy(idx.dataset_emb[rows]).float(), dim=-1)
        return enc.transfer(qt, m, topo, torch.from_numpy(np.log10(np.maximum(idx.n_params[rows], 1)).astype(np.float32)),
                            source, torch.from_numpy(idx.accuracy[rows]).float()).numpy()
    if enc.predictor is None:
        return None
    return enc.predictor(qt, m, topo).numpy()


@torch.no_grad()
def rank_candidates(champ: Champion, idx: ZooIndex, q: np.ndarray, cfg: RankConfig, ds=None) -> tuple[list, int, dict]:
    """Retrieve under the constraints, re-rank (:func:`.rerank.rerank_list`) by the predictor or LogME,
    keep ``top_k``; best first. Returns the candidates, the forward passes LogME made, and the seconds of
    the search and of the re-ranking."""
    t0 = time.perf_counter()
    enc = champ.encoders
    policy = RerankPolicy.of(enc.cfg, cfg.shortlist, cfg.rerank_groups)
    method = cfg.rerank if (cfg.rerank != "predictor" or enc.predictor is not None or enc.transfer is not None) else "none"
    k = {"none": cfg.top_k, "hybrid": len(idx)}.get(method, policy.shortlist)
    hits = idx.search(q, k=k, dataset_weight=enc.cfg.dataset_weight,
                      max_params=cfg.max_params, max_flops=cfg.max_flops, max_latency_ms=cfg.max_latency_ms,
                      exclude_datasets=list(cfg.exclude_datasets) or None)
    scores: dict[int, float] = {}
    passes = 0
    t1 = time.perf_counter()

    def predict(positions: np.ndarray) -> np.ndarray:
        return learned_scores(enc, idx, q, [hits[p]["row"] for p in positions])

    if method == "predictor" and hits:
        order, scores = rerank_list([h["group"] for h in hits], predict, policy)
    elif method == "hybrid" and hits:
        learned = np.arange(len(hits))
        if enc.predictor is not None or enc.transfer is not None:  # the learned ranking (retrieval's without one)
            learned = np.argsort(-predict(learned), kind="stable")
        groups = [hits[p]["group"] for p in learned]
        generalist = [int(p) for p, g in zip(learned, groups) if is_generalist(g)][:1]
        short = hybrid_shortlist(learned.tolist(), groups, HYBRID_K, HYBRID_MIN_GROUPS, must_include=generalist)
        passes = len(short)
        values = transfer_scores([model_uri(hits[p]["model"], hits[p]["version"]) for p in short], ds, cfg.seed,
                                 cfg.device, kinds=(HYBRID_SCORE,))[HYBRID_SCORE]
        scores = dict(zip(short, values.tolist()))
        first = [short[i] for i in np.argsort(-values, kind="stable")]
        order = np.array(first + [int(p) for p in learned if int(p) not in scores], dtype=np.int64)
    elif method == "logme" and hits:
        def predict(positions: np.ndarray) -> np.ndarray:
            nonlocal passes
            passes += len(positions)
            return logme_scores([model_uri(hits[p]["model"], hits[p]["version"]) for p in positions], ds, cfg.seed,
                                cfg.device)

        order, scores = rerank_list([h["group"] for h in hits], predict, policy)
    else:
        order = np.arange(len(hits))
    seconds = {"search": t1 - t0, "rerank": time.perf_counter() - t1}
    out = []
    for rank, pos in enumerate(order[: cfg.top_k], start=1):
        h = hits[pos]
        s = scores.get(int(pos))
        out.append(Candidate(rank=rank, model=h["model"], version=h["version"], group=h["group"],
                             dataset=h["dataset"], accuracy=h["accuracy"], n_params=h["n_params"], flops=h["flops"],
                             arch_hash=h["arch_hash"], arch=h["arch"], latency_ms=h["latency_ms"], score=h["score"],
                             model_uri=model_uri(h["model"], h["version"]),
                             predicted_accuracy=s if method == "predictor" and enc.transfer is None else None,
                             logme=s if method == "logme" or (method == "hybrid" and HYBRID_SCORE == "logme") else None,
                             transfer_score=s if method == "hybrid" or (method == "predictor" and enc.transfer is not None)
                             else None))
    return out, passes, seconds


def searchable(idx: ZooIndex, champion: str, dim: int) -> ZooIndex:
    """The rows of ``idx`` the champion encoders embedded. Versions registered since the last `tans index
    build` are left out with a warning (queries go on answering while a registration runs); none at all is
    an error naming the next step. ``dim``: the champion's embedding size."""
    usable = idx.embedded_by(champion, dim)
    if len(usable) == 0:
        raise TansError(f"the zoo index was embedded by encoders {idx.encoder_version!r}, but the champion is "
                        f"v{champion}: run `tans index build`", code="INDEX_STALE")
    if len(usable) < len(idx):
        log.warning("%d of %d zoo versions are not embedded by the champion encoders v%s yet (registered since the "
                    "last `tans index build`) and are not searched; run `tans index build`",
                    len(idx) - len(usable), len(idx), champion)
    return usable


def rank(cfg: RankConfig) -> RankRecord:
    """Embed the dataset, search the registry under the constraints, re-rank; log the query run."""
    return rank_dataset(cfg)[0]


def rank_dataset(cfg: RankConfig):
    """:func:`rank`, and the dataset it loaded (the fine-tuning stage goes on with it)."""
    t0 = time.time()
    wd, _ = tracking.setup(cfg.work_dir)
    ds = load_dataset(cfg.data, data_dir=cfg.data_dir, seed=cfg.seed)  # bad input fails before any model loads
    champ = load_champion()
    idx, idx_rec = load_index(wd)
    idx = searchable(idx, champ.version, champ.encoders.cfg.embed_dim)
    if cfg.max_latency_ms is not None and np.isnan(idx.latency_ms).all():
        raise TansError("the zoo index holds no latency measurements: run `tans index build --force` on this "
                        "machine, or drop --max-latency-ms", code="NO_LATENCY")
    t_embed = time.time()
    k = cfg.k_per_class or champ.encoders.cfg.k_per_class
    q = embed_dataset(champ, ds, k, cfg.seed)
    t_search = time.time()
    candidates, passes, seconds = rank_candidates(champ, idx, q, cfg, ds)
    if not candidates:
        raise TansError(_no_fit_message(idx, cfg), code="NO_CANDIDATES")
    policy = RerankPolicy.of(champ.encoders.cfg, cfg.shortlist, cfg.rerank_groups)
    method = cfg.rerank if (cfg.rerank != "predictor" or champ.encoders.predictor is not None
                            or champ.encoders.transfer is not None) else "none"
    record = RankRecord(
        dataset={"name": ds.name, "fingerprint": ds.fingerprint(), "classes": ds.n_classes,
                 "train_images": int(len(ds.x_train)), "skipped_images": int(ds.n_skipped)},
        encoder_version=champ.version, index_key=idx_rec["key"], zoo_networks=len(idx),
        constraints={"max_params": cfg.max_params, "max_flops": cfg.max_flops, "max_latency_ms": cfg.max_latency_ms,
                     "exclude_datasets": list(cfg.exclude_datasets),
                     "latency_hardware": json.loads(idx.hardware) if cfg.max_latency_ms is not None else None},
        rerank=method, shortlist={"hybrid": HYBRID_K, "none": cfg.top_k}.get(method, policy.shortlist),
        rerank_groups={"hybrid": HYBRID_MIN_GROUPS, "none": 0}.get(method, policy.groups), k_per_class=k,
        score_kind=HYBRID_SCORE if method == "hybrid" else
        ("transfer" if method == "predictor" and champ.encoders.transfer is not None else None),
        candidates=tuple(candidates), rerank_forward_passes=passes,
        seconds={"load": t_embed - t0, "embed": t_search - t_embed} | seconds)
    if cfg.log_run:
        record = replace(record, run_id=_log_query_run(cfg, record, wd))
    return record, ds


def _no_fit_message(idx: ZooIndex, cfg: RankConfig) -> str:
    limits = {"max_params": cfg.max_params, "max_flops": cfg.max_flops, "max_latency_ms": cfg.max_latency_ms}
    given = ", ".join(f"{k}={v}" for k, v in limits.items() if v is not None)
    if cfg.exclude_datasets:
        given += (", " if given else "") + f"exclude={','.join(cfg.exclude_datasets)}"
    closest = idx.closest(3, exclude_datasets=list(cfg.exclude_datasets) or None, **limits)
    named = "; ".join(
        f"{model_uri(c['model'], c['version'])} (" + ", ".join(
            f"{e['value']:,.4g} {e['unit']} > {e['limit']:,.4g}" for e in c["exceeds"].values()) + ")"
        for c in closest)
    return (f"no zoo network satisfies the constraints ({given or 'none'}) among {len(idx)} networks"
            + (f"; the closest: {named}" if named else "")
            + ". Loosen --max-params/--max-flops/--max-latency-ms (`tans zoo list` shows the sizes)")


def _log_query_run(cfg: RankConfig, record: RankRecord, wd: Path) -> str:
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
                   "k_per_class": record.k_per_class, "rerank": record.rerank}
        mlflow.log_params(params | {"index_key": record.index_key})
        best = record.candidates[0]
        mlflow.log_metrics({"candidates": len(record.candidates), "zoo_networks": record.zoo_networks,
                            "best_source_accuracy": best.accuracy, "rerank_forward_passes": record.rerank_forward_passes}
                           | ({"best_predicted_accuracy": best.predicted_accuracy}
                              if best.predicted_accuracy is not None else {})
                           | {f"seconds_{k}": v for k, v in record.seconds.items()})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "candidates.json"
            path.write_text(json.dumps([asdict(c) for c in record.candidates], indent=1))
            mlflow.log_artifact(str(path))
        return run.info.run_id
