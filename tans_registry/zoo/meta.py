"""The zoo as a meta-dataset, what the encoders learn from: every group with its networks and its images.

A zoo group is re-derived from the data directory (its source dataset, capped and split as in the zoo
build, then the same class-subset task) and checked against the fingerprint the build recorded, so the
encoders never see data other than the zoo's. Its query set is backbone features of up to K training
images per class.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import ImageDataset, class_subset_tasks, load_dataset
from ..data.stats import pixel_descriptor
from ..errors import TansError
from .generalist import GROUP as GENERALIST
from .generalist import pooled
from .store import finished_group_runs, load_functional_embeddings, read_table

log = logging.getLogger("tans_registry")


@dataclass
class MetaGroup:
    name: str
    dataset: str                 # source dataset (leave-datasets-out splits on this)
    run_id: str
    topology: np.ndarray         # [n_nets, 45]
    functional: np.ndarray       # [n_nets, 1280]
    accuracy: np.ndarray         # [n_nets]
    descriptor: np.ndarray       # 22 pixel statistics (the heuristic baseline)
    n_params: np.ndarray | None = None  # [n_nets] (the size baseline)
    source: ImageDataset | None = None  # the whole source dataset (capped as in the build)
    data: ImageDataset | None = None
    features: np.ndarray | None = None   # [n_instances, F] backbone features of the query set


_DATA_PARAMS = ("input_size", "seed", "max_train", "max_test")
# runs of the zoo experiment that are not meta-training groups: the base supernet (no networks) and the
# generalist (its networks are the base's; its images every training dataset's, the validation ones included)
NOT_META = ("__base__", GENERALIST)


def _derive(dataset: str, params: dict, names: set[str], data_dir: str | None):
    """The source dataset (capped as in the build) and its groups' data by group name."""
    p = {k: int(float(params[k])) for k in _DATA_PARAMS if k in params}
    source = load_dataset(dataset, data_dir=data_dir, input_size=p.get("input_size", 32), seed=p.get("seed", 0),
                          max_train=p["max_train"], max_test=p["max_test"])
    n_tasks = max((int(g.rsplit("-t", 1)[1]) + 1 for g in names if g.startswith(dataset + "-t")), default=0)
    candidates = {source.name: source}
    if n_tasks:
        candidates.update({t.name: t for t in class_subset_tasks(source, n_tasks, seed=p.get("seed", 0))})
    return source, candidates


def _verified(candidates: dict, group: str, fingerprint: str | None, data_dir: str | None) -> ImageDataset | None:
    ds = candidates.get(group)
    if ds is None or ds.fingerprint() != fingerprint:
        log.warning("skipping zoo group %s: its data in %s no longer matches the build's fingerprint",
                    group, data_dir or "the data directory")
        return None
    return ds


def load_meta_groups(exp_id: str, data_dir: str | None) -> list[MetaGroup]:
    """Every complete zoo group, with its data re-derived and verified."""
    runs = {g: r for g, r in finished_group_runs(exp_id).items() if g not in NOT_META}
    if not runs:
        raise TansError("the zoo is empty: build it with `tans zoo build` first", code="ZOO_EMPTY")
    by_dataset: dict[str, list] = {}
    for group, run in runs.items():
        by_dataset.setdefault(run.data.tags.get("tans.dataset", group), []).append((group, run))
    out = []
    for dataset, items in sorted(by_dataset.items()):
        source, candidates = _derive(dataset, items[0][1].data.params, {g for g, _ in items}, data_dir)
        for group, run in sorted(items):
            ds = _verified(candidates, group, run.data.tags.get("tans.fingerprint"), data_dir)
            if ds is None:
                continue
            table = read_table(run.info.run_id)
            rows = table["networks"]
            out.append(MetaGroup(
                name=group, dataset=dataset, run_id=run.info.run_id,
                topology=np.array([r["topology"] for r in rows], dtype=np.float32),
                functional=load_functional_embeddings(run.info.run_id).astype(np.float32),
                accuracy=np.array([r["accuracy"] for r in rows], dtype=np.float32),
                descriptor=np.asarray(table["header"].get("descriptor") or pixel_descriptor(ds), dtype=np.float32),
                n_params=np.array([r["n_params"] for r in rows], dtype=np.float64),
                data=ds, source=source))
    if not out:
        raise TansError("no zoo group matches the data directory; pass the --data-dir the zoo was built from",
                        code="ZOO_DATA")
    return out


def split_by_dataset(groups: list[MetaGroup], val_datasets: list[str] | None, seed: int = 0):
    """Leave-datasets-out: every group of a validation dataset goes to validation.

    Default: about a fifth of the source datasets (at least one), chosen with ``seed``."""
    datasets = sorted({g.dataset for g in groups})
    if val_datasets is None:
        if len(datasets) < 2:
            raise TansError("meta-validation needs at least two source datasets in the zoo", code="ZOO_SMALL")
        rng = np.random.default_rng(seed)
        val_datasets = sorted(rng.choice(datasets, size=max(1, len(datasets) // 5), replace=False).tolist())
    unknown = sorted(set(val_datasets) - set(datasets))
    if unknown:
        raise TansError(f"validation datasets {unknown} are not in the zoo; it has {datasets}", code="BAD_CONFIG")
    train = [g for g in groups if g.dataset not in val_datasets]
    val = [g for g in groups if g.dataset in val_datasets]
    if len(train) < 2:
        raise TansError(f"meta-training needs at least 2 zoo groups outside the validation datasets (in-batch "
                        f"negatives); got {len(train)}. Build more groups (`tans zoo build --groups N`) or hold "
                        "out fewer datasets.", code="BAD_CONFIG")
    return train, val, list(val_datasets)


# ------------------------------------------------------------------------------ snapshots
def save_meta_snapshot(groups: list[MetaGroup], path, params_by_dataset: dict[str, dict]) -> Path:
    """Write what the encoders learn from, without the weights: per group its networks' topology,
    functional embedding (float16), accuracy and size, and what re-derives its images from the data
    directory (dataset, capping parameters, fingerprint). A few MB for the bench zoo, against ~1.5 GB of
    supernets: the encoder benchmark can be rerun on the same zoo without rebuilding it
    (``tans encoders bench --snapshot``). ``.npz`` with JSON metadata; no pickle."""
    path = Path(path)
    header = [{"name": g.name, "dataset": g.dataset, "run_id": g.run_id, "fingerprint": g.data.fingerprint(),
               "params": {k: params_by_dataset[g.dataset][k] for k in _DATA_PARAMS
                          if k in params_by_dataset[g.dataset]},
               "descriptor": g.descriptor.tolist()} for g in groups]
    arrays = {"header": np.array(json.dumps(header))}
    for g in groups:
        arrays[f"topology/{g.name}"] = g.topology.astype(np.int8)
        arrays[f"functional/{g.name}"] = g.functional.astype(np.float16)
        arrays[f"accuracy/{g.name}"] = g.accuracy.astype(np.float32)
        arrays[f"n_params/{g.name}"] = np.asarray(g.n_params, dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def load_meta_snapshot(path, data_dir: str | None) -> list[MetaGroup]:
    """The groups of a snapshot written by :func:`save_meta_snapshot`, data re-derived and verified."""
    path = Path(path)
    if not path.is_file():
        raise TansError(f"no zoo snapshot at {path}: write one with `tans encoders bench --save-snapshot FILE`",
                        code="BAD_CONFIG")
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(str(z["header"]))
        arrays = {k: z[k] for k in z.files if k != "header"}
    by_dataset: dict[str, list] = {}
    for h in header:
        by_dataset.setdefault(h["dataset"], []).append(h)
    out = []
    for dataset, items in sorted(by_dataset.items()):
        source, candidates = _derive(dataset, items[0]["params"], {h["name"] for h in items}, data_dir)
        for h in sorted(items, key=lambda h: h["name"]):
            ds = _verified(candidates, h["name"], h["fingerprint"], data_dir)
            if ds is None:
                continue
            n = h["name"]
            out.append(MetaGroup(name=n, dataset=dataset, run_id=h["run_id"],
                                 topology=arrays[f"topology/{n}"].astype(np.float32),
                                 functional=arrays[f"functional/{n}"].astype(np.float32),
                                 accuracy=arrays[f"accuracy/{n}"], n_params=arrays[f"n_params/{n}"].astype(np.float64),
                                 descriptor=np.asarray(h["descriptor"], dtype=np.float32), data=ds, source=source))
    if not out:
        raise TansError(f"no group of the snapshot {path} matches the data directory; pass the --data-dir the "
                        "zoo was built from", code="ZOO_DATA")
    return out


def dataset_params(exp_id: str) -> dict[str, dict]:
    """The data parameters of each dataset's group runs (for :func:`save_meta_snapshot`)."""
    out = {}
    for group, run in finished_group_runs(exp_id).items():
        if group not in NOT_META:
            out.setdefault(run.data.tags.get("tans.dataset", group),
                           {k: run.data.params[k] for k in _DATA_PARAMS if k in run.data.params})
    return out


def load_generalist_data(exp_id: str, groups: list[MetaGroup]) -> ImageDataset | None:
    """The generalist group's pooled images, re-derived from ``groups``' source datasets (capped as in the build)
    and checked against the fingerprint its run recorded; None when the zoo has no generalist, or (with a
    warning) when a source is missing from ``groups`` or the data no longer match."""
    run = finished_group_runs(exp_id).get(GENERALIST)
    if run is None:
        return None
    names = [n for n in run.data.params.get("sources", "").split(",") if n]
    by_dataset = {g.dataset: g.source if g.source is not None else g.data for g in groups}
    missing = [n for n in names if n not in by_dataset]
    if not names or missing:
        log.warning("the generalist's source datasets %s are not all among the zoo's groups; it gets no dataset "
                    "embedding", ", ".join(missing) or "(none recorded)")
        return None
    data = pooled([by_dataset[n] for n in names], int(float(run.data.params.get("seed", 0))))
    if data.fingerprint() != run.data.tags.get("tans.fingerprint"):
        log.warning("the generalist's pooled data no longer match its build's fingerprint; it gets no dataset "
                    "embedding (rebuild the zoo with --resume)")
        return None
    return data
