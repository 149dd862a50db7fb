"""Which device trains and runs the networks (``--device auto|cpu|cuda``): ``auto`` takes CUDA when a
device answers, else the CPU. Modules are moved once; every batch follows its module
(:func:`batch_on`), so the CPU path is the same code with ``cpu`` chosen. Weights written to disk are
always CPU tensors (:func:`cpu_state`)."""
from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve(name: str | None) -> torch.device:
    """``auto`` (or None): CUDA when available, else CPU; ``cuda`` without a device is refused."""
    name = (name or "auto").lower()
    if name not in DEVICES:
        raise ConfigError(f"--device {name!r}: choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device answers here (torch.cuda.is_available() is False); "
                          "use --device cpu, or auto to take a GPU only where there is one")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's weights (CPU for a module without any)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def batch_on(module: nn.Module, *tensors: torch.Tensor):
    """``tensors`` on ``module``'s device (no copy on the CPU); one tensor in, one out."""
    dev = device_of(module)
    moved = tuple(t.to(dev, non_blocking=True) for t in tensors)
    return moved[0] if len(moved) == 1 else moved


def cpu_state(module_or_state) -> dict[str, torch.Tensor]:
    """A state dict as contiguous CPU tensors (what safetensors writes)."""
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
