"""``tans zoo build``: one OFA supernet per meta-training group, N subnets cut out and measured.

Each group is one MLflow run in ``tans/zoo``: parameters, per-epoch metrics, the supernet weights and
the zoo table as artifacts, and the tag ``tans.complete=true`` written last. ``resume`` skips groups
whose complete run has the same configuration hash, so a killed build loses at most the group it was
working on (that run stays RUNNING or FAILED and is rebuilt).
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import tracking
from ..data import ImageDataset, load_dataset, make_groups, resolve_data_dir
from ..data.manifest import dataset_roles
from ..data.stats import image_hashes, pixel_descriptor
from ..device import cpu_state
from ..device import resolve as resolve_device
from ..errors import ConfigError
from . import store
from .config import GroupResult, ZooBuildRecord, ZooConfig
from .cut import PROBE_SEED, measure_all as _measure_all, spec_of as _spec  # noqa: F401 (PROBE_SEED: read here)
from .generalist import GROUP as GENERALIST
from .generalist import build_generalist
from .profiles import ZooProfile, get_profile
from .space import build_supernet
from .tensors import DEFAULT_MEAN, DEFAULT_STD
from .train import n_train_steps, train_supernet
from .workers import build_in_ray, build_in_workers

log = logging.getLogger("tans_registry")
HOLDOUT_TAG = store.HOLDOUT_TAG


def resolve_profile(cfg: ZooConfig) -> ZooProfile:
    """The profile with the config's overrides (validated by :class:`ZooConfig`)."""
    p = get_profile(cfg.profile)
    if cfg.subnets is not None:
        p = replace(p, subnets=cfg.subnets)
    if cfg.groups is not None:
        p = replace(p, n_groups=cfg.groups)
    if cfg.epochs is not None:
        p = replace(p, train=replace(p.train, epochs=cfg.epochs))
    if cfg.base_epochs is not None:
        p = replace(p, base_epochs=cfg.base_epochs)
    if cfg.datasets:
        p = replace(p, datasets=tuple(cfg.datasets))
    if cfg.holdout is not None:
        p = replace(p, holdout=tuple(cfg.holdout))
    return with_manifest_roles(p, cfg)


def with_manifest_roles(p: ZooProfile, cfg: ZooConfig) -> ZooProfile:
    """Where the data directory has a MANIFEST.json, its ``report`` datasets are held out whatever the
    profile or ``--holdout`` say (``--holdout`` may add names, never drop one; the profile's own list of
    reported names gives way to the manifest's, even where it has none); ``--datasets`` naming one is
    refused, and a profile's own dataset list loses them. Without a manifest, ``p`` is returned as it is."""
    roles = dataset_roles(resolve_data_dir(cfg.data_dir))
    if roles is None:
        return p
    report = {n for n, r in roles.items() if r == "report"}
    if cfg.datasets:
        named = [n for n in cfg.datasets if n in report]
        if named:
            raise ConfigError(f"--datasets: {', '.join(map(repr, named))} is a reported dataset (MANIFEST.json role "
                              "report): it is never trained on. Drop it from --datasets; `tans bench` reports on it")
    elif p.datasets:
        dropped = [n for n in p.datasets if n in report]
        if dropped:
            log.info("profile %s: %s left out of the build (MANIFEST.json role report)", p.name, ", ".join(dropped))
            p = replace(p, datasets=tuple(n for n in p.datasets if n not in report))
    return replace(p, holdout=tuple(sorted(set(report) | set(cfg.holdout or ()))))


def build_zoo(cfg: ZooConfig) -> ZooBuildRecord:
    """Build (or resume) the zoo described by ``cfg``; returns what was built and skipped."""
    profile = resolve_profile(cfg)
    resolve_device(cfg.device)  # cuda asked for and absent: refused before anything is written
    work_dir, uri = tracking.setup(cfg.work_dir)
    exp_id = tracking.experiment_id("zoo", work_dir)
    sources = _load_sources(profile, cfg)
    groups = make_groups(sources, profile.n_groups or len(sources), seed=cfg.seed)
    small = [g.name for g in groups if len(g.x_train) < 2]
    if small:
        raise ConfigError(f"group(s) {', '.join(small)} hold fewer than 2 training images: a supernet cannot train on "
                          "them. Use fewer --groups, or datasets with more images")
    if cfg.only_groups:
        names = [g.name for g in groups] + ([GENERALIST] if profile.base_epochs > 0 else [])
        unknown = [n for n in cfg.only_groups if n not in names]
        if unknown:
            raise ConfigError(f"--only-groups: no group named {', '.join(map(repr, unknown))} in this build; "
                              f"its groups are {', '.join(names)}")
        groups = [g for g in groups if g.name in cfg.only_groups]
    done = store.finished_group_runs(exp_id) if cfg.resume else {}
    base_state, base_hash, base_run = None, None, None
    generalist = None
    if profile.base_epochs > 0:
        base_state, base_hash, base_run = _base_supernet(profile, cfg, sources, exp_id, done)
        if not cfg.only_groups or GENERALIST in cfg.only_groups:
            generalist = build_generalist(profile, cfg, sources, exp_id, done, base_state, base_hash, base_run)

    results: dict[str, GroupResult] = {}
    todo: list[tuple[ImageDataset, str]] = []
    for group in groups:
        chash = _config_hash(profile, group, cfg.seed, base_hash)
        prev = done.get(group.name)
        if prev is not None and prev.data.tags.get("tans.config_hash") == chash:
            table = store.read_table(prev.info.run_id)["networks"]
            accs = [r["accuracy"] for r in table]
            results[group.name] = GroupResult(group.name, group.parent or group.name, prev.info.run_id, "skipped",
                                              len(table), max(accs), min(accs), 0.0,
                                              prev.data.metrics.get("logreg_acc"))
        else:
            todo.append((group, chash))

    bar = tqdm(total=len(groups), initial=len(results), desc="zoo groups", unit="group",
               disable=not cfg.progress)
    try:
        if cfg.executor == "ray" and todo:
            build_in_ray(build_group, todo, profile, cfg, exp_id, uri, base_run, results, bar)
        elif (cfg.workers or 1) == 1 or len(todo) < 2:
            for group, chash in todo:
                bar.set_postfix_str(group.name)
                results[group.name] = build_group(group, profile, cfg, exp_id, chash, base_state)
                bar.update(1)
        else:
            build_in_workers(build_group, todo, profile, cfg, exp_id, uri, base_run, results, bar)
    finally:
        bar.close()
    return ZooBuildRecord(profile=profile.name, tracking_uri=tracking.redact(uri), experiment_id=exp_id,
                          groups=tuple(results[g.name] for g in groups), holdout=profile.holdout, generalist=generalist)


def source_names(profile: ZooProfile, data_dir: Path) -> list[str]:
    """The build's training datasets: the profile's list (or the whole data directory) less its holdout.

    A held-out name must be a dataset of the directory, and must not be asked for by name as well."""
    from ..data import list_datasets

    available = [d["name"] for d in list_datasets(data_dir)]
    unknown = [n for n in profile.holdout if n not in available]
    if unknown:
        raise ConfigError(f"--holdout: no dataset named {', '.join(map(repr, unknown))} in {data_dir}; its datasets "
                          f"are {', '.join(available) or '(none)'}. Name datasets of the directory, or "
                          "`--holdout none`")
    both = [n for n in (profile.datasets or ()) if n in profile.holdout]
    if both:
        raise ConfigError(f"{', '.join(map(repr, both))} both built (--datasets or the profile's list) and held "
                          "out (--holdout); a reported dataset must stay out of the zoo: drop it from one of them")
    names = list(profile.datasets) if profile.datasets else available
    return [n for n in names if n not in profile.holdout]


def _load_sources(profile: ZooProfile, cfg: ZooConfig) -> list[ImageDataset]:
    data_dir = resolve_data_dir(cfg.data_dir)
    names = source_names(profile, data_dir)
    if not names:
        raise ConfigError(f"no datasets to build from in {data_dir} (held out: {', '.join(profile.holdout) or 'none'}); "
                          "add .npz archives or pass --data-dir")
    return [load_dataset(n, data_dir=data_dir, input_size=profile.input_size, seed=cfg.seed,
                         max_train=profile.max_train, max_test=profile.max_test) for n in names]


def _config_hash(profile: ZooProfile, group: ImageDataset, seed: int, base: str | None) -> str:
    """What a group's networks depend on: its data, the training settings, the seed, the base.

    The dataset list and group count are left out (the group's own data fingerprint covers them),
    so adding a dataset to a build does not rebuild the groups already there."""
    settings = {k: v for k, v in profile.to_params().items()
                if k not in ("datasets", "n_groups", "name", "holdout")}
    blob = json.dumps({"profile": settings, "data": group.fingerprint(), "seed": seed,
                       "base": base}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _base_supernet(profile, cfg, sources, exp_id, done) -> tuple[dict, str, str]:
    """The shared base supernet: trained once on all source datasets pooled (labels offset per
    dataset, one joint head), then every group's supernet starts from it (its head re-initialised)."""
    import mlflow

    offsets = np.cumsum([0] + [s.n_classes for s in sources])
    x = np.concatenate([s.x_train for s in sources])
    y = np.concatenate([s.y_train + off for s, off in zip(sources, offsets)])
    spec = _spec(profile, int(offsets[-1]))
    blob = json.dumps({"settings": _base_settings(profile), "data": [s.fingerprint() for s in sources],
                       "seed": cfg.seed}, sort_keys=True, default=str)
    chash = hashlib.sha256(blob.encode()).hexdigest()[:16]
    prev = done.get("__base__")
    if prev is not None and prev.data.tags.get("tans.config_hash") == chash:
        from safetensors.torch import load_file

        return load_file(str(store.group_dir(prev.info.run_id) / "supernet.safetensors")), chash, prev.info.run_id
    train_cfg = replace(profile.train, epochs=profile.base_epochs, seed=cfg.seed, steps_per_class=0)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    net = build_supernet(spec).to(device)
    tags = {"tans.kind": "zoo", "tans.group": "__base__", "tans.dataset": "__base__",
            "tans.config_hash": chash, "tans.profile": profile.name, HOLDOUT_TAG: ",".join(profile.holdout)}
    with mlflow.start_run(experiment_id=exp_id, run_name="base-supernet", tags=tags) as run:
        mlflow.log_params({**profile.to_params(), "role": "base", "n_images": len(x), "n_classes": spec.n_classes,
                           "device": str(device)})
        total = n_train_steps(len(x), spec.n_classes, train_cfg)
        with tqdm(total=total, desc="base supernet", unit="step", leave=False, disable=not cfg.progress) as pb:
            train_supernet(net, spec, x, y, train_cfg, DEFAULT_MEAN, DEFAULT_STD,
                           on_epoch=lambda e, m: mlflow.log_metrics(m, step=e), progress=pb.update)
        state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        with tempfile.TemporaryDirectory() as tmp:
            from safetensors.torch import save_file

            save_file(state, str(Path(tmp) / "supernet.safetensors"))
            (Path(tmp) / "zoo.json").write_text(json.dumps({"header": {"supernet": spec.to_dict()}, "networks": []}))
            mlflow.log_artifacts(tmp, store.ARTIFACT_DIR)
        mlflow.set_tag(store.COMPLETE_TAG, "true")
    return state, chash, run.info.run_id


def _base_settings(profile: ZooProfile) -> dict:
    """The settings the base supernet depends on (not the per-group ones: epochs, subnets, ...)."""
    t = profile.train
    return {"base_epochs": profile.base_epochs, "input_size": profile.input_size, "width_mult": profile.width_mult,
            "max_train": profile.max_train, "batch_size": t.batch_size, "lr": t.lr, "momentum": t.momentum,
            "weight_decay": t.weight_decay, "n_random": t.n_random, "warmup_fraction": t.warmup_fraction,
            "crop_pad": t.crop_pad, "grad_clip": t.grad_clip}


def build_group(group: ImageDataset, profile: ZooProfile, cfg: ZooConfig, exp_id: str, chash: str,
                 base_state: dict | None) -> GroupResult:
    import mlflow

    t0 = time.time()
    spec = _spec(profile, group.n_classes)
    dataset = group.parent or group.name
    tags = {"tans.kind": "zoo", "tans.group": group.name, "tans.dataset": dataset,
            "tans.config_hash": chash, "tans.profile": profile.name, "tans.fingerprint": group.fingerprint(),
            HOLDOUT_TAG: ",".join(profile.holdout), "tans.executor": cfg.executor}
    device = resolve_device(cfg.device)
    if tracking.PROJECT_RUN_ID:
        tags["tans.project_run"] = tracking.PROJECT_RUN_ID
    with mlflow.start_run(experiment_id=exp_id, run_name=group.name, tags=tags) as run:
        mlflow.log_params({**profile.to_params(), "group": group.name, "dataset": dataset,
                           "n_classes": group.n_classes, "n_train": len(group.x_train),
                           "n_test": len(group.x_test), "seed": cfg.seed, "probe_seed": PROBE_SEED,
                           "init": "base" if base_state is not None else "scratch", "device": str(device)})
        torch.manual_seed(cfg.seed)  # the initial weights (and so the whole build) follow the seed
        net = build_supernet(spec)
        if base_state is not None:
            own = net.state_dict()
            net.load_state_dict({k: v for k, v in base_state.items() if not k.startswith("classifier.")}
                                | {k: v for k, v in own.items() if k.startswith("classifier.")})
        net.to(device)
        probe = np.random.default_rng(cfg.seed).permutation(len(group.x_test))[: profile.train.eval_images]
        steps = n_train_steps(len(group.x_train), spec.n_classes, profile.train)
        with tqdm(total=steps, desc=f"train {group.name}", unit="step", leave=False,
                  disable=not cfg.progress) as pb:
            train_supernet(net, spec, group.x_train, group.y_train, replace(profile.train, seed=cfg.seed),
                           DEFAULT_MEAN, DEFAULT_STD, group.x_test[probe], group.y_test[probe],
                           on_epoch=lambda e, m: mlflow.log_metrics(m, step=e), progress=pb.update)
        rows, bn, embs = _measure_all(net, spec, group, profile, cfg)
        accs = [r["accuracy"] for r in rows]
        metrics = {"best_acc": max(accs), "min_acc": min(accs), "largest_acc": rows[-1]["accuracy"],
                   "smallest_acc": rows[0]["accuracy"], "acc_spread": max(accs) - min(accs),
                   "n_networks": len(rows)}
        logreg = _logreg_baseline(group) if profile.baseline else None
        if logreg is not None:
            metrics["logreg_acc"] = logreg
        header = {"group": group.name, "dataset": dataset, "classes": list(group.classes),
                  "input_size": profile.input_size, "mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD),
                  "supernet": spec.to_dict(), "probe_seed": PROBE_SEED, "fingerprint": group.fingerprint(),
                  "supernet_run": run.info.run_id, "descriptor": pixel_descriptor(group).tolist()}
        with tempfile.TemporaryDirectory() as tmp:
            store.write_group(Path(tmp), header, rows, cpu_state(net), bn, embs,
                              image_hashes(np.concatenate([group.x_train, group.x_test])))
            mlflow.log_artifacts(tmp, store.ARTIFACT_DIR)
        metrics["seconds"] = time.time() - t0
        mlflow.log_metrics(metrics)
        mlflow.set_tag(store.COMPLETE_TAG, "true")
    return GroupResult(group.name, dataset, run.info.run_id, "built", len(rows), max(accs), min(accs),
                       time.time() - t0, logreg)


def _logreg_baseline(group: ImageDataset) -> float:
    """Logistic regression on raw pixels, as in baselines.md (<= 5,000 train images, max_iter 200)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def feats(x):
        gray = np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2])
        return (x[..., :1] if gray else x).reshape(len(x), -1).astype(np.float32) / 255.0

    xtr, ytr = feats(group.x_train[:5000]), group.y_train[:5000]
    scaler = StandardScaler().fit(xtr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(max_iter=200).fit(scaler.transform(xtr), ytr)
    return float(clf.score(scaler.transform(feats(group.x_test)), group.y_test))
