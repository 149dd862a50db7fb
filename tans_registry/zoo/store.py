"""A group's zoo on disk and in MLflow: the artifacts of one ``tans/zoo`` run, and reading them back.

Each finished group run holds, under ``zoo/``:
- ``supernet.safetensors``: the supernet's weights (no pickle);
- ``bn.safetensors``: every network's recalibrated batch-norm buffers, keys ``n<index>/<buffer>``;
- ``embeddings.safetensors``: ``functional`` [networks, dim] float32, the functional embeddings;
- ``images.safetensors``: ``sha`` [images] int64, a hash of each training and test image of the group
  (:func:`tans_registry.data.stats.image_hashes`), to check later that a query dataset is new to the zoo;
- ``zoo.json``: the group header (dataset, classes, preprocessing, supernet spec) and one row per
  network (arch, topology, accuracy, n_params, flops, ...).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import tracking
from ..errors import TansError
from .config import ZooListConfig
from .space import SupernetSpec, materialize

ARTIFACT_DIR = "zoo"
COMPLETE_TAG = "tans.complete"
HOLDOUT_TAG = "tans.holdout"  # the reported datasets the build kept out (comma-separated; "" for none)


@dataclass(frozen=True)
class ZooNetwork:
    """One row of the zoo: a network by reference to its group's supernet."""

    group: str
    dataset: str
    index: int
    arch_hash: str
    arch: dict
    topology: list[int]
    accuracy: float
    n_params: int
    flops: int
    run_id: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def write_group(out: Path, header: dict, rows: list[dict], supernet_state: dict,
                bn: dict[str, torch.Tensor], f_emb: np.ndarray, image_sha: np.ndarray | None = None) -> Path:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in supernet_state.items()}, str(out / "supernet.safetensors"))
    save_file({k: v.contiguous() for k, v in bn.items()}, str(out / "bn.safetensors"))
    save_file({"functional": torch.from_numpy(np.ascontiguousarray(f_emb, dtype=np.float32))},
              str(out / "embeddings.safetensors"))
    if image_sha is not None:
        save_file({"sha": torch.from_numpy(np.ascontiguousarray(image_sha, dtype=np.int64))},
                  str(out / "images.safetensors"))
    (out / "zoo.json").write_text(json.dumps({"header": header, "networks": rows}, indent=1))
    return out


def read_image_hashes(run_id: str) -> np.ndarray | None:
    """The image hashes a group run kept (None for groups built before they were kept)."""
    import mlflow
    from safetensors.numpy import load_file

    name = f"{ARTIFACT_DIR}/images.safetensors"
    if name not in {f.path for f in mlflow.MlflowClient().list_artifacts(run_id, ARTIFACT_DIR)}:
        return None
    return load_file(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name))["sha"]


def group_dir(run_id: str) -> Path:
    """Local folder of a group run's zoo artifacts (downloaded when the store is remote)."""
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT_DIR))
    except Exception as exc:
        if tracking.is_store_error(exc):
            raise tracking.store_error(exc) from exc
        raise TansError(f"cannot read the zoo artifacts of run {run_id}: {exc}. "
                        "Rebuild the group with `tans zoo build`.", code="ZOO_ARTIFACTS") from exc


def read_table(run_id: str) -> dict:
    import mlflow

    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{ARTIFACT_DIR}/zoo.json")
    except Exception as exc:
        if tracking.is_store_error(exc):
            raise tracking.store_error(exc) from exc
        raise TansError(f"cannot read the zoo table of run {run_id}: {exc}. "
                        "Rebuild the group with `tans zoo build`.", code="ZOO_ARTIFACTS") from exc


def load_network(run_id: str, index: int) -> nn.Module:
    """Materialize network ``index`` of a group run as an eval-mode ``nn.Module``."""
    return network_from_dir(group_dir(run_id), index, where=f"run {run_id}")


def network_from_dir(folder: Path, index: int, where: str = "") -> nn.Module:
    """Materialize network ``index`` from a local copy of a group's ``zoo/`` artifacts."""
    return networks_from_dir(folder, [index], where)[0]


def networks_from_dir(folder: Path, indices: list[int], where: str = "") -> list[nn.Module]:
    """Materialize several networks of one group, building its supernet once."""
    from safetensors.torch import load_file

    from .space import build_supernet, extract_subnet, validate_arch

    table = json.loads((folder / "zoo.json").read_text())
    rows = {r["index"]: r for r in table["networks"]}
    unknown = [i for i in indices if i not in rows]
    if unknown:
        raise TansError(f"{where or folder} has no zoo network {unknown[0]}; it has {sorted(rows)}",
                        code="ZOO_NETWORK")
    spec = SupernetSpec.from_dict(table["header"]["supernet"])
    bn_all = load_file(str(folder / "bn.safetensors"))
    if len(indices) == 1:
        i = indices[0]
        bn = {k[len(f"n{i}/"):]: v for k, v in bn_all.items() if k.startswith(f"n{i}/")}
        return [materialize(spec, load_file(str(folder / "supernet.safetensors")), rows[i]["arch"], bn)]
    supernet = build_supernet(spec)
    supernet.load_state_dict(load_file(str(folder / "supernet.safetensors")))
    out = []
    for i in indices:
        sub = extract_subnet(supernet, validate_arch(rows[i]["arch"], spec))
        sub.load_state_dict({k[len(f"n{i}/"):]: v for k, v in bn_all.items() if k.startswith(f"n{i}/")}, strict=False)
        out.append(sub.eval())
    return out


def load_functional_embeddings(run_id: str) -> np.ndarray:
    from safetensors.numpy import load_file

    return load_file(str(group_dir(run_id) / "embeddings.safetensors"))["functional"]


def finished_group_runs(experiment_id: str) -> dict[str, object]:
    """The latest complete run of every group in the zoo experiment, by group name."""
    import mlflow

    client = mlflow.MlflowClient()
    runs = tracking.paged(lambda n, token: client.search_runs(
        [experiment_id], filter_string=f"tags.`{COMPLETE_TAG}` = 'true' and tags.`tans.kind` = 'zoo'",
        order_by=["attributes.start_time DESC"], max_results=n, page_token=token), page_size=5000)
    latest: dict[str, object] = {}
    for run in runs:
        latest.setdefault(run.data.tags.get("tans.group"), run)
    return latest


def list_zoo(cfg: ZooListConfig) -> tuple[ZooNetwork, ...]:
    """`tans zoo list`: the networks of the latest complete build of every group (a rebuilt group's
    earlier builds, and their superseded registry versions, are not listed)."""
    wd, _ = tracking.setup(cfg.work_dir)
    return tuple(list_networks(tracking.experiment_id("zoo", wd), dataset=cfg.dataset, max_params=cfg.max_params))


def list_networks(experiment_id: str, dataset: str | None = None, max_params: int | None = None) -> list[ZooNetwork]:
    """The networks of the latest complete build of every group of the zoo experiment."""
    out = []
    for group, run in sorted(finished_group_runs(experiment_id).items()):
        header_dataset = run.data.tags.get("tans.dataset", group)
        if dataset is not None and dataset not in (group, header_dataset):
            continue
        for r in read_table(run.info.run_id)["networks"]:
            if max_params is not None and r["n_params"] > max_params:
                continue
            out.append(ZooNetwork(group=group, dataset=header_dataset, index=r["index"],
                                  arch_hash=r["arch_hash"], arch=r["arch"], topology=r["topology"],
                                  accuracy=r["accuracy"], n_params=r["n_params"], flops=r["flops"],
                                  run_id=run.info.run_id))
    return out
