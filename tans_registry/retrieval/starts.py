"""The one preparation of every start: what fine-tuning, the linear probe and LogME all see.

A start is a zoo version (``{"kind": "zoo", "uri": ...}``), a subnet of the shared base supernet (the
generalist: ``{"kind": "base", "weights": path, "supernet": spec, "arch": ..., "base_run": id}``) or an
architecture with random weights (``{"kind": "scratch", "supernet": spec, "arch": ..., "seed": ...}``).
:func:`load_start` builds its module; :func:`prepare` then treats every module alike:

- its batch-norm statistics are re-estimated on the *same* query training images (:func:`calibration_set`:
  at most ``CALIB_IMAGES`` of the training part, the validation part carved out first, seeded). A subnet cut
  from a supernet has no statistics of its own, so "keep the source statistics" cannot mean the same thing
  for a zoo version and a generalist subnet; re-estimating on the query's images can, and costs one forward
  pass of ``CALIB_IMAGES`` images;
- a new classifier for the query's classes, initialised from the same seed;
- the start's own preprocessing (mean, std).

It returns the module and a :class:`Preparation` record, which is the same for every start of one query
and seed (a test builds one start of each kind and compares them).

``bn="source"`` is the alternative the policy was compared with (``scripts/bn_policy.py``, on the selection
datasets mnist and pacs_sketch, 2026-12-04: ``query`` fine-tuned 19.2 points better after one epoch and 2.2
after five, intervals above 0, and LogME's tau 0.486 against 0.254; BENCHMARKS.md): each start keeps the
statistics of its own source (a zoo version those the zoo build estimated
on its group's images; a generalist subnet's estimated on images of the pooled training datasets, given
as ``x_source``; random weights their initial ones), and no query image is used.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.sampling import stratified_split
from ..zoo.measure import recalibrate_bn
from ..zoo.tensors import DEFAULT_MEAN, DEFAULT_STD

# Query training images re-estimating every start's batch norm: 256 (as LogME's images) keeps the cost of
# preparing each of a zoo's networks for LogME to one extra forward pass of the size LogME makes anyway.
CALIB_IMAGES = 256
BN_POLICY = "query"  # batch-norm statistics: re-estimated on the query's training images, for every start
BN_POLICIES = ("query", "source")


@dataclass(frozen=True)
class Preparation:
    """How a start was prepared: identical for every start of one query and seed."""

    bn: str            # "query": statistics re-estimated on the calibration images; "source": the start's own
    calib_images: int  # query images the statistics were estimated on (0 under "source")
    calib_sha: str     # sha256 (16 hex) of the calibration images' bytes
    head_seed: int
    n_classes: int
    source_images: int = 0  # under "source": the source images a generalist's statistics were estimated on

    def to_dict(self) -> dict:
        return asdict(self)


def new_head(module: nn.Module, n_classes: int, seed: int) -> nn.Module:
    """Replace the subnet's classifier by a fresh ``Linear`` for ``n_classes`` (seeded)."""
    old = module.classifier.linear
    torch.manual_seed(seed)
    module.classifier.linear = nn.Linear(old.in_features, n_classes)
    module.classifier.out_features = n_classes
    return module


def split_train_val(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation indices of the training images ``y`` (stratified, seeded)."""
    return stratified_split(y, val_fraction, np.random.default_rng([seed, 7]))


def calibration_set(x_train: np.ndarray, y_train: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """The images every start's batch norm is re-estimated on: at most ``CALIB_IMAGES`` of the training part
    (validation images never), in a seeded order."""
    tr, _ = split_train_val(y_train, val_fraction, seed)
    x = x_train[tr]
    return x[np.random.default_rng(seed).permutation(len(x))[:CALIB_IMAGES]]


def load_start(start: dict, seed: int) -> tuple[nn.Module, list[float], list[float]]:
    """The start's module (its own head still on) and its preprocessing, on the CPU, unprepared."""
    from ..zoo.space import SupernetSpec, build_supernet, extract_subnet, validate_arch

    kind = start.get("kind")
    if kind == "zoo":
        from ..registry.pyfunc import load_module, load_network_info

        info = load_network_info(start["uri"])
        return load_module(start["uri"]), list(info["mean"]), list(info["std"])
    if kind not in ("base", "scratch"):
        raise ValueError(f"unknown start kind {kind!r}")
    spec = SupernetSpec.from_dict(start["supernet"])
    torch.manual_seed(start.get("seed", seed))
    supernet = build_supernet(spec)
    if kind == "base":
        from safetensors.torch import load_file

        path = Path(start["weights"])
        if not path.is_file() and start.get("base_run"):  # a Ray task on another machine: fetch it there
            from ..zoo.store import group_dir

            path = group_dir(start["base_run"]) / "supernet.safetensors"
        supernet.load_state_dict(load_file(str(path)))
    return extract_subnet(supernet, validate_arch(start["arch"], spec)), list(DEFAULT_MEAN), list(DEFAULT_STD)


def prepare(module: nn.Module, mean, std, n_classes: int, x_calib: np.ndarray, seed: int,
            device: torch.device | str = "cpu", head: bool = True, bn: str = BN_POLICY,
            x_source: np.ndarray | None = None) -> tuple[nn.Module, Preparation]:
    """Prepare a loaded start in place, the same way for every kind: batch norm re-estimated on
    ``x_calib`` (``bn="source"``: on ``x_source`` where given, else kept as loaded, and ``x_calib`` unused),
    a new seeded head for ``n_classes`` (``head=False``: the features only, for LogME), moved to
    ``device``, in eval mode."""
    if bn not in BN_POLICIES:
        raise ValueError(f"unknown batch-norm policy {bn!r}; choose one of {', '.join(BN_POLICIES)}")
    module = module.to(device)
    n_source = 0
    if bn == "source":  # x_source is for a module with no statistics of its own (prepared_start passes it so)
        x_calib = x_calib[:0]
        if x_source is not None and len(x_source) >= 2:
            recalibrate_bn(module, x_source, mean, std, batch_size=len(x_source))
            n_source = int(len(x_source))
    elif len(x_calib) < 2:  # one image has no batch statistics (a 1x1 map at 32 pixels): nothing to estimate
        x_calib = x_calib[:0]
    else:  # one batch of all of them: every image weighs the same (the estimate is their exact statistics)
        recalibrate_bn(module, x_calib, mean, std, batch_size=len(x_calib))
    if head:
        module = new_head(module, n_classes, seed).to(device)
    module.eval()
    sha = hashlib.sha256(np.ascontiguousarray(x_calib).tobytes()).hexdigest()[:16]
    return module, Preparation(bn=bn, calib_images=int(len(x_calib)), calib_sha=sha, head_seed=int(seed),
                               n_classes=int(n_classes), source_images=n_source)


def prepared_start(start: dict, n_classes: int, x_calib: np.ndarray, seed: int,
                   device: torch.device | str = "cpu", bn: str = BN_POLICY,
                   x_source: np.ndarray | None = None) -> tuple[nn.Module, list[float], list[float], Preparation]:
    """:func:`load_start` then :func:`prepare`: the start as fine-tuning begins from it. Under
    ``bn="source"`` a generalist subnet (kind ``base``) needs ``x_source``, the images its statistics come
    from; the other kinds keep theirs."""
    module, mean, std = load_start(start, seed)
    if bn == "source" and start.get("kind") == "base" and (x_source is None or len(x_source) < 2):
        raise ValueError("bn='source' needs x_source (2 images or more) for a subnet of the base supernet: it has no "
                         "statistics of its own")
    src = x_source if start.get("kind") == "base" else None
    module, prep = prepare(module, mean, std, n_classes, x_calib, seed, device, bn=bn, x_source=src)
    return module, mean, std, prep
