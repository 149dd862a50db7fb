"""The meta-dataset the encoders learn from: every zoo group with its networks and its image set.

A zoo group is re-derived from the data directory (its source dataset, capped and split as in the zoo
build, then the same class-subset task) and checked against the fingerprint the build recorded, so the
encoders never see data other than the zoo's. Its query set is backbone features of up to K training
images per class.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..data import ImageDataset, class_subset_tasks, load_dataset
from ..data.stats import pixel_descriptor
from ..errors import TansError
from ..zoo.store import finished_group_runs, load_functional_embeddings, read_table

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


def load_meta_groups(exp_id: str, data_dir: str | None) -> list[MetaGroup]:
    """Every complete zoo group, with its data re-derived and verified."""
    runs = {g: r for g, r in finished_group_runs(exp_id).items() if g != "__base__"}
    if not runs:
        raise TansError("the zoo is empty: build it with `tans zoo build` first", code="ZOO_EMPTY")
    by_dataset: dict[str, list] = {}
    for group, run in runs.items():
        by_dataset.setdefault(run.data.tags.get("tans.dataset", group), []).append((group, run))
    out = []
    for dataset, items in sorted(by_dataset.items()):
        p = items[0][1].data.params
        source = load_dataset(dataset, data_dir=data_dir, input_size=int(p.get("input_size", 32)),
                              seed=int(p.get("seed", 0)), max_train=int(p["max_train"]), max_test=int(p["max_test"]))
        names = {g for g, _ in items}
        n_tasks = max((int(g.rsplit("-t", 1)[1]) + 1 for g in names if g.startswith(dataset + "-t")), default=0)
        candidates = {source.name: source}
        if n_tasks:
            candidates.update({t.name: t for t in class_subset_tasks(source, n_tasks, seed=int(p.get("seed", 0)))})
        for group, run in sorted(items):
            ds = candidates.get(group)
            if ds is None or ds.fingerprint() != run.data.tags.get("tans.fingerprint"):
                log.warning("skipping zoo group %s: its data in %s no longer matches the build's fingerprint",
                            group, data_dir or "the data directory")
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
