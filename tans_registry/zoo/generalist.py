"""The generalist: the shared base supernet's subnets as a zoo group of their own.

The base supernet (``__base__``) is trained once on every training dataset pooled (labels offset per
dataset, one joint head) and every group's supernet starts from it. Its own subnets are what TANS compared
against (an ImageNet-pretrained network: one start for every task), and the fine-tuning benchmark's
``best_average`` start is one of them. Registered like any group, they are candidates of every ranking:
retrieval, the predictor and LogME can return them, and a query shows them as the generalist.

The group run (``tans.group`` = :data:`GROUP`, ``tans.dataset`` = :data:`DATASET`) is an ordinary zoo group
run: the base's weights, the same sampled architectures as every group (same seed and count), batch norm
recalibrated on a seeded sample of the pooled training images, accuracy on the pooled test images (the
joint head: a network must name the dataset and the class, so it is lower than a group's), the same probe
batch's functional embedding, the pooled images' hashes. Registration, the index, the benchmark and
`tans zoo list` read it as they read any group. The encoders never train on it (its images are every
training dataset's, the validation datasets' included); their run embeds it from a per-dataset sample of
the pooled images (``training/stage.py``).
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from ..data import ImageDataset
from ..data.sampling import stratified_subsample

GROUP = "__generalist__"   # the group (and so the registered model zoo.__generalist__)
DATASET = "__pooled__"     # its source dataset: the training datasets pooled
# pooled test images the generalist's networks are measured on, per source dataset: 17 x 300 on the bench zoo
# (measuring 6 networks then costs ~1 minute on 2 cores, not ~4 at the groups' 1,000 a dataset)
TEST_PER_DATASET = 300


def is_generalist(group: str | None) -> bool:
    return group == GROUP


def pooled(sources: list[ImageDataset], seed: int, test_per_dataset: int = TEST_PER_DATASET) -> ImageDataset:
    """The training datasets pooled as one dataset: labels offset per dataset in ``sources``' order (the base
    supernet's joint head), classes named ``<dataset>/<class>``, each source's test images capped at
    ``test_per_dataset`` (stratified, seeded)."""
    offsets = np.cumsum([0] + [s.n_classes for s in sources])
    rng = np.random.default_rng([seed, 31])
    tests = [stratified_subsample(s.y_test, test_per_dataset, rng) for s in sources]
    return ImageDataset(
        name=DATASET,
        x_train=np.concatenate([s.x_train for s in sources]),
        y_train=np.concatenate([s.y_train + off for s, off in zip(sources, offsets)]).astype(np.int64),
        x_test=np.concatenate([s.x_test[t] for s, t in zip(sources, tests)]),
        y_test=np.concatenate([s.y_test[t] + off for s, t, off in zip(sources, tests, offsets)]).astype(np.int64),
        classes=tuple(f"{s.name}/{c}" for s in sources for c in s.classes), source="pooled")


def config_hash(base_hash: str, profile, seed: int) -> str:
    """What the generalist's networks depend on: the base supernet, the subnets drawn, their batch norm."""
    blob = json.dumps({"base": base_hash, "subnets": profile.subnets, "calib_images": profile.calib_images,
                       "input_size": profile.input_size, "test_per_dataset": TEST_PER_DATASET, "seed": seed},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_generalist(profile, cfg, sources: list[ImageDataset], exp_id: str, done: dict, base_state: dict,
                     base_hash: str, base_run: str):
    """The generalist group run (skipped when ``done`` holds one of the same configuration); its
    :class:`~tans_registry.zoo.config.GroupResult`."""
    import mlflow

    from .. import tracking
    from ..data.stats import image_hashes, pixel_descriptor
    from ..device import cpu_state
    from . import store
    from .config import GroupResult
    from .cut import PROBE_SEED, measure_all, spec_of
    from .space import build_supernet
    from .tensors import DEFAULT_MEAN, DEFAULT_STD

    chash = config_hash(base_hash, profile, cfg.seed)
    prev = done.get(GROUP)
    if prev is not None and prev.data.tags.get("tans.config_hash") == chash:
        accs = [r["accuracy"] for r in store.read_table(prev.info.run_id)["networks"]]
        return GroupResult(GROUP, DATASET, prev.info.run_id, "skipped", len(accs), max(accs), min(accs), 0.0)
    t0 = time.time()
    data = pooled(sources, cfg.seed)
    spec = spec_of(profile, data.n_classes)
    net = build_supernet(spec)
    net.load_state_dict(base_state)
    tags = {"tans.kind": "zoo", "tans.group": GROUP, "tans.dataset": DATASET, "tans.config_hash": chash,
            "tans.profile": profile.name, "tans.fingerprint": data.fingerprint(), "tans.base_run": base_run,
            store.HOLDOUT_TAG: ",".join(profile.holdout)}
    if tracking.PROJECT_RUN_ID:
        tags["tans.project_run"] = tracking.PROJECT_RUN_ID
    with mlflow.start_run(experiment_id=exp_id, run_name=GROUP, tags=tags) as run:
        mlflow.log_params({**profile.to_params(), "group": GROUP, "dataset": DATASET, "n_classes": data.n_classes,
                           "n_train": len(data.x_train), "n_test": len(data.x_test), "seed": cfg.seed,
                           "probe_seed": PROBE_SEED, "init": "base", "sources": ",".join(s.name for s in sources),
                           "test_per_dataset": TEST_PER_DATASET})
        rows, bn, embs = measure_all(net, spec, data, profile, cfg)
        accs = [r["accuracy"] for r in rows]
        header = {"group": GROUP, "dataset": DATASET, "classes": list(data.classes), "input_size": profile.input_size,
                  "mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD), "supernet": spec.to_dict(),
                  "probe_seed": PROBE_SEED, "fingerprint": data.fingerprint(), "supernet_run": run.info.run_id,
                  "descriptor": pixel_descriptor(data).tolist(), "sources": [s.name for s in sources],
                  "base_run": base_run}
        with tempfile.TemporaryDirectory() as tmp:
            store.write_group(Path(tmp), header, rows, cpu_state(net), bn, embs,
                              image_hashes(np.concatenate([data.x_train, data.x_test])))
            mlflow.log_artifacts(tmp, store.ARTIFACT_DIR)
        mlflow.log_metrics({"best_acc": max(accs), "min_acc": min(accs), "acc_spread": max(accs) - min(accs),
                            "n_networks": len(rows), "seconds": time.time() - t0})
        mlflow.set_tag(store.COMPLETE_TAG, "true")
    return GroupResult(GROUP, DATASET, run.info.run_id, "built", len(rows), max(accs), min(accs), time.time() - t0)
