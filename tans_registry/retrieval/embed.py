"""Embedding with the champion encoders: a query dataset -> its query vector, and every zoo version ->
its learned model and dataset embeddings (written into the version's tags by ``tans index build``).

The champion is read through the registry (``tans-encoders@champion``, an MLflow model folder holding
the encoders and their backbone). A zoo version's model embedding is computed from its topology (and
functional embedding, read from its group run, not from the tags, so a later encoder re-embeds from the
raw descriptors); its dataset embedding from its group's query set (the backbone features the encoder
run stored). Versions already embedded by the champion are skipped, so a second run writes nothing.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..encoders.backbone import SmallBackbone, extract_features, sample_per_class
from ..encoders.flavour import load_encoders
from ..encoders.models import TansEncoders
from ..errors import TansError
from ..registry import models as registry_models
from ..registry.codec import encode_embedding
from ..registry.names import ENCODERS_MODEL
from ..registry.register import current_zoo_versions, write_embeddings
from ..zoo.space import topology
from ..zoo.store import load_functional_embeddings

log = logging.getLogger("tans_registry")
QUERY_SETS = "query_sets.npz"  # artifact of an encoder run: backbone features of every group's query set


@dataclass(frozen=True)
class Champion:
    version: str
    run_id: str
    encoders: TansEncoders
    backbone: SmallBackbone


def load_champion(required: bool = True) -> Champion | None:
    """The champion encoders (and their backbone); without one, an error naming the next step (or None
    when not ``required``)."""
    ref = registry_models.champion(ENCODERS_MODEL)
    if ref is None:
        if not required:
            return None
        raise TansError("no trained encoders are registered: run `tans encoders train`, then `tans index build`",
                        code="NO_ENCODERS")
    enc, backbone = load_encoders(registry_models.download(ref))
    return Champion(version=ref.version, run_id=ref.run_id, encoders=enc, backbone=backbone)


def query_sets(run_id: str) -> dict[str, np.ndarray]:
    """The query-set features by group name, stored by encoder run ``run_id``."""
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=QUERY_SETS)
    with np.load(path, allow_pickle=False) as z:
        return {k.split("/", 1)[1]: z[k] for k in z.files}


@torch.no_grad()
def embed_dataset(champ: Champion, ds, k_per_class: int, seed: int) -> np.ndarray:
    """The dataset embedding of ``ds``: backbone features of up to K training images per class, pooled by
    the query encoder."""
    feats = extract_features(champ.backbone, ds.x_train[sample_per_class(ds, k_per_class, seed)])
    return champ.encoders.query(torch.from_numpy(feats)[None])[0].numpy()


@torch.no_grad()
def embed_zoo(progress: bool = True) -> dict:
    """Re-embed every current zoo version with the champion encoders (tracking must be set up); with no
    champion, nothing (the tags keep the raw descriptors)."""
    champ = load_champion(required=False)
    if champ is None:
        return {"encoder_version": "raw", "updated": 0, "models": 0}
    enc, features = champ.encoders, query_sets(champ.run_id)
    todo = [v for v in current_zoo_versions() if v.tags.get("tans.encoder_version") != champ.version]
    funcs: dict[str, np.ndarray] = {}
    dataset_emb: dict[str, str] = {}
    updates = []
    for v in todo:
        run_id, idx, group = v.tags["tans.supernet_run"], int(v.tags["tans.index"]), v.tags.get("tans.group", "")
        if run_id not in funcs:
            funcs[run_id] = load_functional_embeddings(run_id)
        topo = torch.tensor([topology(json.loads(v.tags["tans.arch"]))], dtype=torch.float32)
        func = torch.from_numpy(funcs[run_id][idx: idx + 1])
        m = enc.model(topo, func if enc.cfg.use_functional else None)[0].numpy()
        if v.tags.get("tans.standalone") == "true":  # `tans zoo add`: its dataset, loaded again from where it was read
            key = f"{group}/{v.tags.get('tans.network_id')}"
            if key not in dataset_emb:
                dataset_emb[key] = encode_embedding(_standalone_dataset_embedding(champ, v))
            updates.append((v, encode_embedding(m), dataset_emb[key]))
            continue
        if group not in dataset_emb:
            if group in features:
                dataset_emb[group] = encode_embedding(enc.query(torch.from_numpy(features[group])[None])[0].numpy())
            else:
                log.warning("group %s has no query set in the encoder run; its dataset embedding is left empty", group)
                dataset_emb[group] = encode_embedding([])
        updates.append((v, encode_embedding(m), dataset_emb[group]))
    touched = write_embeddings(updates, champ.version, progress=progress)
    return {"encoder_version": champ.version, "updated": len(updates), "models": touched}


def _standalone_dataset_embedding(champ: Champion, v) -> np.ndarray | list:
    """A standalone zoo version's dataset embedding: its dataset (network.json ``data``: the spec, data
    directory and seed the query read it with) loaded again and checked against its fingerprint, embedded as a
    query is; ``[]`` (no dataset term) with a warning when it cannot be found."""
    from ..data import load_dataset
    from ..registry.names import model_uri
    from ..registry.pyfunc import DATA_FILE
    from ..registry import integrity

    uri = model_uri(v.name, v.version)
    try:
        network = json.loads((integrity.download(uri) / DATA_FILE).read_text())
        data = network.get("data") or {}
        ds = load_dataset(data["spec"], data_dir=data.get("data_dir"), seed=int(data.get("seed") or 0))
    except Exception as exc:  # noqa: BLE001 - its dataset is gone: no dataset term, not a failed index
        log.warning("%s: its dataset cannot be loaded again (%s); it is searched without a dataset embedding", uri,
                    str(exc).splitlines()[0][:120])
        return []
    if ds.fingerprint() != network.get("fingerprint"):
        log.warning("%s: its dataset changed since it was fine-tuned (fingerprint); it is searched without a dataset "
                    "embedding", uri)
        return []
    return embed_dataset(champ, ds, champ.encoders.cfg.k_per_class, int(data.get("seed") or 0))
