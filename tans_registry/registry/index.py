"""The zoo index: every registered zoo version as arrays, cached, filtered, searched.

Listing 14,000 versions through the registry's search API takes seconds, too slow for every query, so
the index is built once by paging through the versions and cached (``.npz``, no pickle) under a key made
of the registry's state (each zoo model's name and last-update time) and the encoder version. A query
reads the state (one page of registered models), then loads the cache: under a second at 14,000.

Only the groups' current builds are indexed (a rebuilt group's superseded versions are left out).
Constraint filters run before ranking; :meth:`ZooIndex.search` is exact cosine top-k over what passes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import params as P
from .. import tracking
from ..errors import ConfigError, TansError
from ..zoo.space import TOPOLOGY_DIM, topology
from . import client as C
from .codec import decode_embedding
from .models import champion_version
from .names import ENCODERS_MODEL, ZOO_PREFIX
from .register import DONE_TAG, current_zoo_versions

log = logging.getLogger("tans_registry")
_ARRAYS = ("names", "versions", "groups", "datasets", "accuracy", "n_params", "flops", "model_emb", "dataset_emb",
           "topology", "arch_hashes", "archs", "n_classes", "latency_ms", "encoders")
LIMITS = (("max_params", "n_params", "parameters"), ("max_flops", "flops", "FLOPs"),
          ("max_latency_ms", "latency_ms", "ms latency"))


@dataclass
class ZooIndex:
    names: np.ndarray        # registered-model name per version
    versions: np.ndarray     # version number (int64)
    groups: np.ndarray
    datasets: np.ndarray
    accuracy: np.ndarray     # float32, source-dataset test accuracy
    n_params: np.ndarray     # int64
    flops: np.ndarray        # int64
    model_emb: np.ndarray    # float32 [N, D]
    dataset_emb: np.ndarray  # float32 [N, Dd]
    topology: np.ndarray     # float32 [N, 45] (the predictor's input; zeros where a version has no arch)
    arch_hashes: np.ndarray  # str
    archs: np.ndarray        # str: the OFA arch config as JSON
    n_classes: np.ndarray    # int64: the network's head (its source dataset's classes)
    latency_ms: np.ndarray   # float32: ONNX Runtime batch-1 latency on the machine of `hardware` (NaN: unmeasured)
    encoders: np.ndarray     # str: the encoder version whose embeddings each row holds ("raw": none yet)
    encoder_version: str
    key: str
    hardware: str = "{}"     # JSON: where latency_ms was measured (zoo.latency.hardware)

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, keep: np.ndarray) -> "ZooIndex":
        """The rows where ``keep`` (a boolean array) holds, as an index of their own."""
        arrays = {a: getattr(self, a)[keep] for a in _ARRAYS}
        encoders = sorted(set(arrays["encoders"].tolist()))
        return ZooIndex(**arrays, encoder_version=",".join(encoders) or "none", key=self.key, hardware=self.hardware)

    def embedded_by(self, encoder_version: str, dim: int) -> "ZooIndex":
        """The rows embedded by ``encoder_version``, whose embeddings have ``dim`` values (versions registered
        since the last `tans index build` hold other embeddings, and widened the arrays they share)."""
        if self.encoder_version == encoder_version:
            return self
        out = self.subset(self.encoders == encoder_version)
        out.model_emb, out.dataset_emb = out.model_emb[:, :dim], out.dataset_emb[:, :dim]
        return out

    # ------------------------------------------------------------------ constraints and search
    def mask(self, max_params: int | None = None, max_flops: int | None = None, max_latency_ms: float | None = None,
             min_accuracy: float | None = None, include_datasets=None, exclude_datasets=None) -> np.ndarray:
        """Rows that satisfy every given constraint (a boolean array). A latency limit keeps only rows
        whose latency was measured."""
        max_params = P.as_int("search", "max_params", max_params, 1, optional=True, flag=False)
        max_flops = P.as_int("search", "max_flops", max_flops, 1, optional=True, flag=False)
        max_latency_ms = P.as_float("search", "max_latency_ms", max_latency_ms, above=0, optional=True, flag=False)
        min_accuracy = P.as_float("search", "min_accuracy", min_accuracy, minimum=0, maximum=1, optional=True,
                                  flag=False)
        keep = np.ones(len(self), dtype=bool)
        if max_params is not None:
            keep &= self.n_params <= max_params
        if max_flops is not None:
            keep &= self.flops <= max_flops
        if max_latency_ms is not None:
            keep &= np.nan_to_num(self.latency_ms, nan=np.inf) <= max_latency_ms
        if min_accuracy is not None:
            keep &= self.accuracy >= min_accuracy
        if include_datasets:
            keep &= np.isin(self.datasets, list(include_datasets))
        if exclude_datasets:
            keep &= ~np.isin(self.datasets, list(exclude_datasets))
        return keep

    def search(self, query: np.ndarray, k: int = 10, dataset_weight: float = 0.0, **constraints) -> list[dict]:
        """Exact top-``k`` by cosine similarity between ``query`` and the model embeddings (plus
        ``dataset_weight`` times its cosine to each network's source-dataset embedding, as the encoders
        were validated: ``EncoderConfig.dataset_weight``), among the rows that pass ``constraints``
        (see :meth:`mask`); best first. Each result carries its ``row`` in the index."""
        if not isinstance(k, (int, np.integer)):
            P.fail("search", "k", "an int >= 1", k, flag=False)
        k = P.as_int("search", "k", k, 1, flag=False)
        q = np.asarray(query, dtype=np.float32).ravel()
        if q.shape[0] != self.model_emb.shape[1]:
            raise ConfigError(f"query has {q.shape[0]} dimensions; the index holds {self.model_emb.shape[1]}")
        rows = np.flatnonzero(self.mask(**constraints))
        if rows.size == 0:
            return []
        # score every row, then keep the passing ones: cheaper than copying the passing rows
        qn = max(float(np.linalg.norm(q)), 1e-12)
        scores = (self.model_emb @ q) / (self.row_norms * qn)
        if dataset_weight:
            if self.dataset_emb.shape[1] != q.shape[0]:
                raise ConfigError("the index's dataset embeddings are not in the encoders' space; run `tans index build`")
            dn = np.maximum(np.linalg.norm(self.dataset_emb, axis=1), 1e-12)
            scores = scores + dataset_weight * (self.dataset_emb @ q) / (dn * qn)
        if rows.size != len(self):
            scores = scores[rows]
        return [self.row(int(rows[i]), score=float(scores[i])) for i in top_k(scores, int(k))]

    def closest(self, n: int = 3, exclude_datasets=None, **limits) -> list[dict]:
        """When nothing fits: the ``n`` rows that exceed the ``limits`` (``max_params``, ``max_flops``,
        ``max_latency_ms``) least (by the largest relative excess), each with what it exceeds."""
        rows = np.flatnonzero(self.mask(exclude_datasets=exclude_datasets))
        excess = np.zeros(len(rows))
        for limit, column, _ in LIMITS:
            if limits.get(limit) is not None:
                values = np.nan_to_num(getattr(self, column)[rows].astype(np.float64), nan=np.inf)
                excess = np.maximum(excess, values / float(limits[limit]) - 1.0)
        out = []
        for i in rows[np.argsort(excess, kind="stable")[:n]]:
            over = {}
            for limit, column, unit in LIMITS:
                value = float(getattr(self, column)[i])
                if limits.get(limit) is not None and not value <= limits[limit]:
                    over[limit] = {"value": value, "limit": limits[limit], "unit": unit}
            out.append(self.row(int(i)) | {"exceeds": over})
        return out

    @property
    def row_norms(self) -> np.ndarray:
        """L2 norm of every model embedding, computed once per loaded index (no normalised copy)."""
        if getattr(self, "_norms", None) is None or len(self._norms) != len(self.model_emb):
            self._norms = np.maximum(np.linalg.norm(self.model_emb, axis=1), 1e-12).astype(np.float32)
        return self._norms

    def row(self, i: int, score: float | None = None) -> dict:
        out = {"row": i, "model": str(self.names[i]), "version": int(self.versions[i]), "group": str(self.groups[i]),
               "dataset": str(self.datasets[i]), "accuracy": float(self.accuracy[i]),
               "n_params": int(self.n_params[i]), "flops": int(self.flops[i]), "arch_hash": str(self.arch_hashes[i]),
               "arch": json.loads(str(self.archs[i]) or "{}"),
               "latency_ms": None if np.isnan(self.latency_ms[i]) else round(float(self.latency_ms[i]), 4)}
        if score is not None:
            out["score"] = score
        return out

    # ------------------------------------------------------------------ persistence (no pickle)
    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{a: getattr(self, a) for a in _ARRAYS},
                 meta=np.array(json.dumps({"encoder_version": self.encoder_version, "key": self.key,
                                           "hardware": self.hardware})))
        tmp.replace(path)  # atomic: a reader never sees half a cache
        return path

    @classmethod
    def load(cls, path: Path) -> "ZooIndex":
        """Raises ``KeyError`` for a cache written by an older version (missing arrays): rebuild it."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls(**{a: z[a] for a in _ARRAYS}, **meta)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest ``scores``, best first (ties in position order)."""
    k = min(int(k), scores.size)
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


# ---------------------------------------------------------------------- building from the registry
@C.boundary("read the zoo's registry state")
def registry_state() -> tuple[str, list[str]]:
    """A key of the zoo's registry state: each zoo model's name, last-update time, registered build and
    encoder version, and the champion encoders' version."""
    items = sorted((m.name, int(m.last_updated_timestamp or 0), m.tags.get(DONE_TAG, ""),
                    m.tags.get("tans.encoder_version", "raw")) for m in C.models_like(ZOO_PREFIX))
    blob = json.dumps({"models": items, "encoder": champion_version(ENCODERS_MODEL) or "raw"})
    return hashlib.sha256(blob.encode()).hexdigest()[:20], [n for n, *_ in items]


def index_from_versions(versions, key: str) -> ZooIndex:
    """Arrays from registry model versions (their ``tans.*`` tags)."""
    cols = {a: [] for a in _ARRAYS}
    encoders, garbled = set(), []
    for v in versions:
        t = v.tags
        if "tans.model_embedding" not in t:
            continue  # not a zoo version (or one being written)
        try:
            model_emb = decode_embedding(t["tans.model_embedding"])
            dataset_emb = decode_embedding(t.get("tans.dataset_embedding", "f16:"))
            arch = topology(json.loads(t["tans.arch"])) if "tans.arch" in t else np.zeros(TOPOLOGY_DIM)
            n_classes = _n_classes(t.get("tans.classes", "[]"))
        except (ValueError, KeyError, TypeError) as exc:  # a garbled tag: that version is left out, not the zoo
            garbled.append(f"{v.name} v{v.version} ({str(exc)[:60]})")
            continue
        cols["names"].append(v.name)
        cols["versions"].append(int(v.version))
        cols["groups"].append(t.get("tans.group", v.name))
        cols["datasets"].append(t.get("tans.dataset", ""))
        cols["accuracy"].append(float(t.get("tans.accuracy", "nan")))
        cols["n_params"].append(int(t.get("tans.n_params", 0)))
        cols["flops"].append(int(t.get("tans.flops", 0)))
        cols["model_emb"].append(model_emb)
        cols["dataset_emb"].append(dataset_emb)
        cols["topology"].append(arch)
        cols["arch_hashes"].append(t.get("tans.arch_hash", ""))
        cols["archs"].append(t.get("tans.arch", ""))
        cols["n_classes"].append(n_classes)
        cols["encoders"].append(t.get("tans.encoder_version", "raw"))
        encoders.add(t.get("tans.encoder_version", "raw"))
    if garbled:
        log.warning("%d zoo version(s) left out of the index, their tags unreadable: %s%s; re-register them "
                    "(`tans zoo register`) or delete them", len(garbled), "; ".join(garbled[:3]),
                    " ..." if len(garbled) > 3 else "")
    if len(encoders) > 1:
        log.warning("zoo versions carry embeddings of several encoders %s; run `tans index build`", sorted(encoders))
    return ZooIndex(
        names=np.array(cols["names"], dtype=str), versions=np.array(cols["versions"], dtype=np.int64),
        groups=np.array(cols["groups"], dtype=str), datasets=np.array(cols["datasets"], dtype=str),
        accuracy=np.array(cols["accuracy"], dtype=np.float32), n_params=np.array(cols["n_params"], dtype=np.int64),
        flops=np.array(cols["flops"], dtype=np.int64), model_emb=_stack(cols["model_emb"]),
        dataset_emb=_stack(cols["dataset_emb"]), topology=_stack(cols["topology"]),
        arch_hashes=np.array(cols["arch_hashes"], dtype=str), archs=np.array(cols["archs"], dtype=str),
        n_classes=np.array(cols["n_classes"], dtype=np.int64), latency_ms=np.full(len(cols["names"]), np.nan, np.float32),
        encoders=np.array(cols["encoders"], dtype=str), encoder_version=",".join(sorted(encoders)) or "none", key=key)


def _n_classes(tag: str) -> int:
    """A version's class count from its ``tans.classes`` tag (the list, or ``{"n": N}`` when it was long)."""
    value = json.loads(tag)
    return int(value["n"]) if isinstance(value, dict) else len(value)


def _measured_here(idx: ZooIndex) -> bool:
    from ..zoo.latency import hardware, hardware_key

    try:
        return hardware_key(json.loads(idx.hardware)) == hardware_key(hardware())
    except (ValueError, TypeError):
        return False


def measure_latency(idx: ZooIndex, folder: Path) -> int:
    """Fill ``idx.latency_ms`` from this machine's latency cache in ``folder``, measuring what is missing
    (once per architecture and class count); returns how many were measured now."""
    from ..zoo.latency import LatencyCache

    cache = LatencyCache(folder)
    before, supernets = len(cache.ms), {}
    keys = sorted({(h, a, int(k)) for h, a, k in zip(idx.arch_hashes, idx.archs, idx.n_classes) if a})
    missing = [(h, a, k) for h, a, k in keys if f"{h}/{k}" not in cache.ms]
    for h, a, k in tqdm(missing, desc="latency (ONNX Runtime, batch 1)", unit="arch", disable=not missing):
        cache.get(h, json.loads(a), k, supernets)
    for i, (h, k) in enumerate(zip(idx.arch_hashes, idx.n_classes)):
        idx.latency_ms[i] = cache.ms.get(f"{h}/{int(k)}", np.nan)
    cache.save()
    idx.hardware = json.dumps(cache.hardware)
    return len(cache.ms) - before


def _stack(vectors: list[np.ndarray]) -> np.ndarray:
    """Rows of equal length; shorter ones (e.g. a missing descriptor) are zero-padded."""
    width = max((len(v) for v in vectors), default=0)
    out = np.zeros((len(vectors), width), dtype=np.float32)
    for i, v in enumerate(vectors):
        out[i, : len(v)] = v
    return out


def cache_path(work_dir: Path, key: str) -> Path:
    return tracking.cache_dir(work_dir) / f"zoo-index-{key}.npz"


@C.boundary("read the zoo index")
def load_index(work_dir: str | Path | None = None, force: bool = False, latency: bool = True) -> tuple[ZooIndex, dict]:
    """The index of the registry's current state (of the work dir's store, or MLFLOW_TRACKING_URI's):
    from the cache when fresh (and not ``force``), else rebuilt from the registry and cached, with each
    architecture's latency on this machine (``latency``; measured once per architecture, cached); returns
    it and a record with timings and whether the cache was hit."""
    wd, _ = tracking.setup(work_dir)
    t0 = time.perf_counter()
    key, models = registry_state()
    path = cache_path(wd, key)
    idx = None
    if path.exists() and not force:
        try:
            idx = ZooIndex.load(path)
        except KeyError:
            log.info("index cache %s predates this version; rebuilding it", path.name)
    if idx is not None:
        measured = 0
        if latency and not _measured_here(idx):  # a cache made on another machine: this machine's latencies
            measured = measure_latency(idx, tracking.cache_dir(wd))
        return idx, {"cache": "hit", "versions": len(idx), "models": len(models), "latency_measured": measured,
                     "seconds": time.perf_counter() - t0, "path": str(path), "key": key}
    if not models:
        raise TansError("no zoo models in the registry: run `tans zoo register` first", code="ZOO_EMPTY")
    idx = index_from_versions(current_zoo_versions(), key)
    measured = measure_latency(idx, tracking.cache_dir(wd)) if latency else 0
    try:
        idx.save(path)
    except OSError as exc:
        raise TansError(f"cannot write the zoo index cache {path}: {exc.strerror or exc}. Make the work directory "
                        "writable (--work-dir, TANS_WORK_DIR) and run the command again", code="CACHE") from exc
    for old in path.parent.glob("zoo-index-*.npz"):  # one cache per work dir: older states go
        if old != path:
            old.unlink(missing_ok=True)
    _log_index_artifact(wd, path, key, len(idx), idx.hardware)
    return idx, {"cache": "built", "versions": len(idx), "models": len(models), "latency_measured": measured,
                 "seconds": time.perf_counter() - t0, "path": str(path), "key": key}


def _log_index_artifact(wd: Path, path: Path, key: str, n: int, hardware: str) -> None:
    """Keep each built index as an artifact of a run in tans/zoo (tag tans.kind=index; the latencies'
    hardware as tag tans.latency_hardware)."""
    import mlflow

    exp_id = tracking.experiment_id("zoo", wd)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"index-{key[:8]}",
                          tags={"tans.kind": "index", "tans.index_key": key, "tans.latency_hardware": hardware}):
        mlflow.log_metric("versions", n)
        mlflow.log_artifact(str(path), "index")
