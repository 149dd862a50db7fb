"""The OFA MobileNetV3 search space: supernets, subnet configs, topology encoding, materialization.

A zoo network is stored *by reference*: its architecture config (kernel size and expand ratio of each
of the 20 elastic blocks, depth of each of the 5 stages) plus the supernet it was cut from, plus its
recalibrated batch-norm statistics. :func:`materialize` turns that back into a runnable ``nn.Module``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

N_STAGES = 5
BLOCKS_PER_STAGE = 4
N_BLOCKS = N_STAGES * BLOCKS_PER_STAGE  # 20 elastic blocks
TOPOLOGY_DIM = 2 * N_BLOCKS + N_STAGES  # 45 = 20 kernels + 20 expands + 5 depths


@dataclass(frozen=True)
class SupernetSpec:
    """Everything needed to rebuild a supernet's module tree (its weights live elsewhere)."""

    n_classes: int
    width_mult: float = 1.0
    ks_list: tuple[int, ...] = (3, 5, 7)
    expand_list: tuple[int, ...] = (3, 4, 6)
    depth_list: tuple[int, ...] = (2, 3, 4)
    dropout_rate: float = 0.0

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SupernetSpec":
        return cls(
            n_classes=int(d["n_classes"]),
            width_mult=float(d.get("width_mult", 1.0)),
            ks_list=tuple(d.get("ks_list", (3, 5, 7))),
            expand_list=tuple(d.get("expand_list", (3, 4, 6))),
            depth_list=tuple(d.get("depth_list", (2, 3, 4))),
            dropout_rate=float(d.get("dropout_rate", 0.0)),
        )


def build_supernet(spec: SupernetSpec) -> nn.Module:
    """A freshly initialised OFA MobileNetV3 supernet (the `ofa` package's implementation), its depthwise
    layers skipping the kernel taps that only see padding (:mod:`.fastconv`: the same output, faster)."""
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3

    from .fastconv import install

    return install(OFAMobileNetV3(
        n_classes=spec.n_classes,
        dropout_rate=spec.dropout_rate,
        width_mult=spec.width_mult,
        ks_list=list(spec.ks_list),
        expand_ratio_list=list(spec.expand_list),
        depth_list=list(spec.depth_list),
    ))


def max_arch(spec: SupernetSpec) -> dict:
    return {"ks": [max(spec.ks_list)] * N_BLOCKS, "e": [max(spec.expand_list)] * N_BLOCKS,
            "d": [max(spec.depth_list)] * N_STAGES}


def min_arch(spec: SupernetSpec) -> dict:
    return {"ks": [min(spec.ks_list)] * N_BLOCKS, "e": [min(spec.expand_list)] * N_BLOCKS,
            "d": [min(spec.depth_list)] * N_STAGES}


def validate_arch(arch: dict, spec: SupernetSpec) -> dict:
    """Check an arch config against the space; returns it with plain-int lists."""
    try:
        ks, e, d = [int(v) for v in arch["ks"]], [int(v) for v in arch["e"]], [int(v) for v in arch["d"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"an arch config needs integer lists 'ks', 'e', 'd'; got {arch!r}") from exc
    if len(ks) != N_BLOCKS or len(e) != N_BLOCKS or len(d) != N_STAGES:
        raise ValueError(f"an arch config needs {N_BLOCKS} kernel sizes, {N_BLOCKS} expand ratios and "
                         f"{N_STAGES} depths; got {len(ks)}, {len(e)}, {len(d)}")
    if not (set(ks) <= set(spec.ks_list) and set(e) <= set(spec.expand_list) and set(d) <= set(spec.depth_list)):
        raise ValueError(f"arch config {arch!r} is outside the space ks={spec.ks_list} "
                         f"e={spec.expand_list} d={spec.depth_list}")
    return {"ks": ks, "e": e, "d": d}


def sample_archs(spec: SupernetSpec, n: int, seed: int) -> list[dict]:
    """``n`` distinct subnet configs spread over the size range, smallest and largest included.

    Subnet ``i`` gets a size knob ``s = i / (n - 1)``; every choice (kernel, expand, depth) takes the
    option at position ``s * (len - 1)`` plus seeded noise of +-1 option, so the configs sweep from
    the smallest to the largest network while staying diverse. Deterministic for ``(spec, n, seed)``.
    """
    if n < 1:
        raise ValueError(f"the number of subnets must be >= 1; got {n}")
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    seen: set[str] = set()

    def pick(options, s, noise):
        j = int(np.clip(np.rint(s * (len(options) - 1) + noise), 0, len(options) - 1))
        return int(sorted(options)[j])

    for i in range(n):
        s = i / (n - 1) if n > 1 else 1.0
        for attempt in range(200):
            if attempt == 0 and (i == 0 or i == n - 1):
                arch = min_arch(spec) if i == 0 else max_arch(spec)
            else:
                amp = 0.9 + 0.05 * attempt
                arch = {
                    "ks": [pick(spec.ks_list, s, rng.uniform(-amp, amp)) for _ in range(N_BLOCKS)],
                    "e": [pick(spec.expand_list, s, rng.uniform(-amp, amp)) for _ in range(N_BLOCKS)],
                    "d": [pick(spec.depth_list, s, rng.uniform(-amp, amp)) for _ in range(N_STAGES)],
                }
            key = arch_hash(arch)
            if key not in seen:
                seen.add(key)
                out.append(arch)
                break
        else:  # the space is tiny (tests): accept fewer than n
            break
    return out


def topology(arch: dict) -> list[int]:
    """The 45-value topology: 20 kernel sizes, 20 expand ratios, 5 depths.

    Depth-masked (unlike the reference): the kernel and expand entries of blocks beyond a stage's
    active depth are 0, so two configs that build the same network encode identically.
    """
    ks, e, d = list(arch["ks"]), list(arch["e"]), list(arch["d"])
    for stage, depth in enumerate(d):
        for b in range(depth, BLOCKS_PER_STAGE):
            ks[stage * BLOCKS_PER_STAGE + b] = 0
            e[stage * BLOCKS_PER_STAGE + b] = 0
    return [int(v) for v in ks + e + d]


def arch_hash(arch: dict) -> str:
    """Short stable id of the network an arch builds (inactive blocks do not count)."""
    return hashlib.sha1(json.dumps(topology(arch)).encode()).hexdigest()[:10]


def set_active(supernet: nn.Module, arch: dict) -> None:
    supernet.set_active_subnet(ks=list(arch["ks"]), e=list(arch["e"]), d=list(arch["d"]))


def extract_subnet(supernet: nn.Module, arch: dict) -> nn.Module:
    """Cut the subnet of ``arch`` out of a live supernet (weights copied, BN stats sliced), its depthwise
    layers skipping the kernel taps that only see padding (:mod:`.fastconv`)."""
    from ..device import device_of
    from .fastconv import install

    set_active(supernet, arch)
    return install(supernet.get_active_subnet(preserve_weight=True)).to(device_of(supernet))


def bn_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The batch-norm buffers of a module (what recalibration changes)."""
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            out[f"{name}.running_mean"] = m.running_mean.detach().cpu().clone()
            out[f"{name}.running_var"] = m.running_var.detach().cpu().clone()
    return out


def materialize(
    spec: SupernetSpec,
    supernet_state: dict[str, torch.Tensor],
    arch: dict,
    bn: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """A runnable ``nn.Module`` (eval mode) for one zoo network.

    ``supernet_state`` is the supernet's state dict (from safetensors); ``bn`` the network's
    recalibrated batch-norm buffers, as returned by :func:`bn_state` on the measured subnet. Without
    ``bn`` the subnet keeps the supernet's own statistics, sliced to its channels.
    """
    arch = validate_arch(arch, spec)
    supernet = build_supernet(spec)
    supernet.load_state_dict(supernet_state)
    subnet = extract_subnet(supernet, arch)
    if bn is not None:
        missing = [k for k in bn_state(subnet) if k not in bn]
        if missing:
            raise ValueError(f"batch-norm statistics do not match the subnet: {len(missing)} buffers "
                             f"missing (e.g. {missing[0]})")
        subnet.load_state_dict(bn, strict=False)
    return subnet.eval()
