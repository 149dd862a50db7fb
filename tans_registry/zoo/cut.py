"""Cutting networks out of a trained supernet and measuring them: what every zoo group does (``build.py``) and
the generalist does with the base supernet (``generalist.py``)."""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from .measure import accuracy, count_flops, functional_embedding, n_params, recalibrate_bn
from .space import SupernetSpec, arch_hash, bn_state, extract_subnet, sample_archs, topology
from .tensors import DEFAULT_MEAN, DEFAULT_STD

PROBE_SEED = 777  # seed of the probe batch behind every functional embedding (TANS's seed)


def spec_of(profile, n_classes: int) -> SupernetSpec:
    """The supernet of a profile for ``n_classes``."""
    return SupernetSpec(n_classes=n_classes, width_mult=profile.width_mult)


def measure_all(net, spec, group, profile, cfg):
    """The profile's ``subnets`` architectures (sampled with the build's seed) cut out of ``net``, each with its
    batch norm recalibrated on a seeded sample of ``group``'s training images, measured on its test images:
    the zoo table's rows, every network's batch-norm buffers, the functional embeddings."""
    rows, bn, embs = [], {}, []
    archs = sample_archs(spec, profile.subnets, seed=cfg.seed)
    # archives are often ordered by class: calibrate on a seeded random sample, not the first rows
    pick = np.random.default_rng(cfg.seed).permutation(len(group.x_train))[: profile.calib_images]
    calib = group.x_train[np.sort(pick)]
    for i, arch in enumerate(tqdm(archs, desc=f"measure {group.name}", unit="net", leave=False,
                                  disable=not cfg.progress)):
        sub = extract_subnet(net, arch)
        recalibrate_bn(sub, calib, DEFAULT_MEAN, DEFAULT_STD)
        rows.append({"index": i, "arch_hash": arch_hash(arch), "arch": arch, "topology": topology(arch),
                     "accuracy": accuracy(sub, group.x_test, group.y_test, DEFAULT_MEAN, DEFAULT_STD),
                     "n_params": n_params(sub), "flops": count_flops(sub, profile.input_size)})
        bn.update({f"n{i}/{k}": v for k, v in bn_state(sub).items()})
        embs.append(functional_embedding(sub, profile.input_size, PROBE_SEED))
    return rows, bn, np.stack(embs)
