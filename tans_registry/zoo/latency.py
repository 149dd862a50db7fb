"""Each zoo architecture's inference latency: ONNX Runtime, batch 1, this machine's CPU provider, median
of repeated runs after warm-up. Measured once per (architecture, classes) and cached in the work
directory with the hardware it was measured on (``<work dir>/tans-cache/latency-<hardware>.json``); a
different machine measures its own.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .onnx import export_onnx, session
from .space import SupernetSpec, build_supernet, extract_subnet

WARMUP, REPEATS = 5, 30


def hardware() -> dict:
    """What a latency figure depends on, as recorded beside it."""
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "provider": "CPUExecutionProvider",
            "onnxruntime": ort.__version__, "threads": torch.get_num_threads(), "batch": 1,
            "statistic": f"median of {REPEATS} runs after {WARMUP} warm-up runs"}


def hardware_key(hw: dict) -> str:
    return hashlib.sha256(json.dumps(hw, sort_keys=True).encode()).hexdigest()[:12]


def measure(arch: dict, n_classes: int, input_size: int = 32, width_mult: float = 1.0, supernet=None) -> float:
    """Median milliseconds of one batch-1 inference of the subnet ``arch`` (weights do not matter)."""
    spec = SupernetSpec(n_classes=n_classes, width_mult=width_mult)
    net = supernet if supernet is not None else build_supernet(spec)
    sub = extract_subnet(net, arch).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(sub, torch.zeros(1, 3, input_size, input_size), Path(tmp) / "m.onnx")
        sess = session(path, device="cpu", threads=torch.get_num_threads())
    x = np.random.default_rng(0).normal(size=(1, 3, input_size, input_size)).astype(np.float32)
    name = sess.get_inputs()[0].name
    for _ in range(WARMUP):
        sess.run(None, {name: x})
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t) * 1000.0)
    return float(np.median(times))


class LatencyCache:
    """Latencies by ``<arch_hash>/<n_classes>`` for this machine, kept in a JSON file."""

    def __init__(self, folder: Path):
        self.hardware = hardware()
        self.path = Path(folder) / f"latency-{hardware_key(self.hardware)}.json"
        self.ms: dict[str, float] = {}
        if self.path.is_file():
            try:
                self.ms = {k: float(v) for k, v in json.loads(self.path.read_text()).get("ms", {}).items()}
            except (ValueError, AttributeError):
                self.ms = {}  # a damaged cache is measured again

    def get(self, arch_hash: str, arch: dict, n_classes: int, supernets: dict) -> float:
        key = f"{arch_hash}/{n_classes}"
        if key not in self.ms:
            if n_classes not in supernets:
                supernets[n_classes] = build_supernet(SupernetSpec(n_classes=n_classes))
            self.ms[key] = measure(arch, n_classes, supernet=supernets[n_classes])
        return self.ms[key]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"hardware": self.hardware, "ms": self.ms}, indent=1, sort_keys=True))
        tmp.replace(self.path)
