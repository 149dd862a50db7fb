"""``tans zoo register``: every zoo network becomes a version of its group's registered model.

Bulk and cheap: a version's source is a tiny MLmodel folder (``registry/n<index>/`` of the group run)
that points at the group's supernet, so a version costs one ``create_model_version`` call (~10 ms) and
about a kilobyte of artifacts, never a copy of the weights. Idempotent: a network already registered
(tag ``tans.network_id`` = ``<run_id>:<index>``) is skipped, so a second run changes nothing.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import tracking
from ..errors import TansError
from ..zoo.store import finished_group_runs, load_functional_embeddings, read_table
from .codec import compact_json, encode_embedding, fit_tag
from .naming import quote, zoo_model_name
from .pyfunc import write_model_dir

log = logging.getLogger("tans_registry")
RAW_ENCODER = "raw"  # tans.encoder_version until `tans index build` writes learned embeddings
REGISTRY_DIR = "registry"
DONE_TAG = "tans.registered_run"  # model tag: the group run whose networks are all registered


@dataclass
class RegisterRecord:
    tracking_uri: str
    models: dict[str, int] = field(default_factory=dict)  # model name -> versions created now
    created: int = 0
    existing: int = 0


def version_tags(header: dict, row: dict, run_id: str, f_emb: np.ndarray) -> dict[str, str]:
    """The ``tans.*`` tags of one zoo version (each under the 5,000-character cap)."""
    descriptor = header.get("descriptor") or []
    classes = compact_json(header["classes"])
    return {
        "tans.dataset": header["dataset"],
        "tans.group": header["group"],
        "tans.index": str(row["index"]),
        "tans.network_id": f"{run_id}:{row['index']}",
        "tans.arch_hash": row["arch_hash"],
        "tans.dataset_embedding": encode_embedding(descriptor),
        "tans.model_embedding": encode_embedding(np.concatenate([np.asarray(row["topology"], np.float32), f_emb])),
        "tans.encoder_version": RAW_ENCODER,
        "tans.accuracy": f"{row['accuracy']:.6f}",
        "tans.n_params": str(row["n_params"]),
        "tans.flops": str(row["flops"]),
        "tans.arch": compact_json(row["arch"]),
        "tans.input_size": str(header["input_size"]),
        "tans.mean": compact_json(header["mean"]),
        "tans.std": compact_json(header["std"]),
        "tans.classes": fit_tag(classes, compact_json({"n": len(header["classes"]), "in": "network.json"})),
        "tans.supernet_run": run_id,
    }


def model_card(header: dict, row: dict, name: str) -> str:
    d = row["arch"]["d"]
    classes = ", ".join(header["classes"][:12]) + (" ..." if len(header["classes"]) > 12 else "")
    return (
        f"### Zoo network {row['index']} of group `{header['group']}`\n\n"
        f"| | |\n|---|---|\n"
        f"| source dataset | `{header['dataset']}` ({len(header['classes'])} classes: {classes}) |\n"
        f"| test accuracy | {row['accuracy']:.4f} |\n"
        f"| parameters | {row['n_params']:,} |\n"
        f"| FLOPs (32x32 input) | {row['flops'] / 1e6:.1f} M |\n"
        f"| architecture | OFA MobileNetV3, depths {d}, arch hash `{row['arch_hash']}` |\n"
        f"| input | {header['input_size']}x{header['input_size']} RGB uint8, normalised with mean "
        f"{header['mean']} std {header['std']} |\n"
        f"| supernet run | `{header['supernet_run']}` |\n\n"
        "Load it:\n\n"
        "```python\n"
        f"probs = mlflow.pyfunc.load_model('models:/{name}/<version>').predict(images)  # uint8 [N,H,W,3]\n"
        f"module = tans_registry.registry.load_module('models:/{name}/<version>')      # nn.Module\n"
        "```\n"
        "Weights are stored once per group (safetensors) and cut out on load; no pickle."
    )


def register_zoo(work_dir: str | None = None, progress: bool = True) -> RegisterRecord:
    """Register every network of the zoo's latest complete group runs (idempotent)."""
    import mlflow

    wd, uri = tracking.setup(work_dir)
    exp_id = tracking.experiment_id("zoo", wd)
    client = mlflow.MlflowClient()
    rec = RegisterRecord(tracking_uri=tracking.redact(uri))
    groups = {g: r for g, r in finished_group_runs(exp_id).items() if g != "__base__"}
    if not groups:
        raise TansError("the zoo is empty: build it first with `tans zoo build --profile quick`", code="ZOO_EMPTY")
    for group, run in tqdm(sorted(groups.items()), desc="register", unit="group", disable=not progress):
        name = zoo_model_name(group)
        model = _get_model(client, name)
        if model is not None and model.tags.get(DONE_TAG) == run.info.run_id:
            rec.existing += int(model.tags.get("tans.n_networks", 0))  # the whole group is in: skip cheaply
            continue
        table = read_table(run.info.run_id)
        header, rows = table["header"], table["networks"]
        if model is None:
            _create_model(client, name, header)
        have = {v.tags.get("tans.network_id") for v in _versions(client, name)}
        todo = [r for r in rows if f"{run.info.run_id}:{r['index']}" not in have]
        rec.existing += len(rows) - len(todo)
        if not todo:
            _mark_done(client, name, run.info.run_id, len(rows))
            continue
        _ensure_model_dirs(client, run, header, rows)
        f_emb = load_functional_embeddings(run.info.run_id)
        for row in todo:
            client.create_model_version(
                name, source=f"{run.info.artifact_uri}/{REGISTRY_DIR}/n{row['index']}", run_id=run.info.run_id,
                tags=version_tags(header, row, run.info.run_id, f_emb[row["index"]]),
                description=model_card(header, row, name))
        _mark_done(client, name, run.info.run_id, len(rows))
        rec.models[name] = len(todo)
        rec.created += len(todo)
    return rec


def _versions(client, name: str) -> list:
    out, token = [], None
    while True:
        page = client.search_model_versions(f"name = {quote(name)}", max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _get_model(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None


def _mark_done(client, name: str, run_id: str, n: int) -> None:
    """Record on the model that every network of ``run_id`` is registered (set last, after them)."""
    client.set_registered_model_tag(name, "tans.n_networks", str(n))
    client.set_registered_model_tag(name, DONE_TAG, run_id)


def _create_model(client, name: str, header: dict) -> None:
    client.create_registered_model(
        name, tags={"tans.kind": "zoo", "tans.group": header["group"], "tans.dataset": header["dataset"]},
        description=(f"Zoo networks of group `{header['group']}` (source dataset `{header['dataset']}`, "
                     f"{len(header['classes'])} classes): one version per OFA MobileNetV3 subnet cut out "
                     "of the group's supernet. Version tags `tans.*` hold accuracy, size, architecture "
                     "and embeddings."))


def _ensure_model_dirs(client, run, header: dict, rows: list[dict]) -> None:
    """Log the per-network MLmodel folders into the group run, once."""
    if client.list_artifacts(run.info.run_id, REGISTRY_DIR):
        return
    zoo_uri = f"{run.info.artifact_uri}/zoo"
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            write_model_dir(Path(tmp) / f"n{row['index']}", {
                "zoo_artifacts": zoo_uri, "run_id": run.info.run_id, "index": row["index"],
                "arch": row["arch"], "arch_hash": row["arch_hash"], "group": header["group"],
                "dataset": header["dataset"], "classes": header["classes"], "input_size": header["input_size"],
                "mean": header["mean"], "std": header["std"], "accuracy": row["accuracy"],
                "n_params": row["n_params"], "flops": row["flops"]})
        client.log_artifacts(run.info.run_id, tmp, REGISTRY_DIR)
