"""Write the champion encoders' embeddings into the zoo's version tags (part of `tans index build`).

For every zoo version: the model embedding from its topology and functional embedding (read from its
group run, not from the tags, so a later encoder re-embeds from the raw descriptors), the dataset
embedding from its group's query set (the backbone features the encoder run stored). Versions already
embedded by the champion are skipped, so a second run writes nothing.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..zoo.space import topology
from ..zoo.store import load_functional_embeddings
from .codec import encode_embedding
from .index import ENCODERS_MODEL, all_zoo_versions, champion_encoder_version

log = logging.getLogger("tans_registry")


def load_champion(client, with_query_sets: bool = True):
    """(version, encoders, query-set features by group) of `tans-encoders@champion`, or None.
    ``with_query_sets=False`` skips the query sets (a query does not need them): features is None."""
    import mlflow

    from ..encoders.models import TansEncoders

    version = champion_encoder_version(client)
    if version == "raw":
        return None
    mv = client.get_model_version(ENCODERS_MODEL, version)
    folder = Path(mlflow.artifacts.download_artifacts(mv.source))
    if not with_query_sets:
        return version, TansEncoders.load(folder), None
    sets = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="query_sets.npz"))
    with np.load(sets, allow_pickle=False) as z:
        features = {k.split("/", 1)[1]: z[k] for k in z.files}
    return version, TansEncoders.load(folder), features


@torch.no_grad()
def apply_encoders(progress: bool = True) -> dict:
    """Re-embed every zoo version with the champion encoders (tracking must be set up)."""
    import mlflow

    client = mlflow.MlflowClient()
    champ = load_champion(client)
    if champ is None:
        return {"encoder_version": "raw", "updated": 0, "skipped": 0}
    version, enc, features = champ
    todo = [v for v in all_zoo_versions(client) if v.tags.get("tans.encoder_version") != version]
    funcs: dict[str, np.ndarray] = {}
    dataset_emb: dict[str, str] = {}
    touched = set()
    for v in tqdm(todo, desc="embed zoo", unit="version", disable=not progress):
        run_id, idx, group = v.tags["tans.supernet_run"], int(v.tags["tans.index"]), v.tags.get("tans.group", "")
        if run_id not in funcs:
            funcs[run_id] = load_functional_embeddings(run_id)
        topo = torch.tensor([topology(json.loads(v.tags["tans.arch"]))], dtype=torch.float32)
        func = torch.from_numpy(funcs[run_id][idx : idx + 1])
        m = enc.model(topo, func if enc.cfg.use_functional else None)[0].numpy()
        if group not in dataset_emb:
            if group in features:
                dataset_emb[group] = encode_embedding(enc.query(torch.from_numpy(features[group])[None])[0].numpy())
            else:
                log.warning("group %s has no query set in the encoder run; its dataset embedding is left empty", group)
                dataset_emb[group] = encode_embedding([])
        client.set_model_version_tag(v.name, v.version, "tans.model_embedding", encode_embedding(m))
        client.set_model_version_tag(v.name, v.version, "tans.dataset_embedding", dataset_emb[group])
        client.set_model_version_tag(v.name, v.version, "tans.encoder_version", version)
        touched.add(v.name)
    for name in touched:  # bumps the model's update time: the index cache key moves on
        client.set_registered_model_tag(name, "tans.encoder_version", version)
    return {"encoder_version": version, "updated": len(todo), "models": len(touched)}
