"""Dataset roles from a data directory's ``MANIFEST.json`` (``{name: {..., "role": "train" | "report"}}``).

A ``report`` dataset is never trained on (zoo build, base supernet, backbone, encoders) and never used for
a choice; the fine-tuning benchmark reports on it. A directory without a manifest has no roles: the build's
``--holdout`` (or its profile's) decides alone. No torch here.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError

MANIFEST = "MANIFEST.json"
ROLES = ("train", "report")
# The selection datasets: training datasets of the shared directory on which the project's choices are made
# (the batch-norm policy, the transfer predictor's loss and inputs, the re-ranking policy, the recipe) and
# whose figures are never reported as results. Fixed on 2026-12-04 with the batch-norm policy's choice.
SELECTION_DATASETS = ("mnist", "pacs_sketch")


def dataset_roles(data_dir: str | Path) -> dict[str, str] | None:
    """``name -> role`` for the archives of ``data_dir`` its manifest names (None: no manifest there)."""
    root = Path(data_dir)
    path = root / MANIFEST
    if not path.is_file():
        return None
    fix = f"fix or remove {path} (each entry: {{\"role\": \"train\" | \"report\", ...}})"
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not readable JSON ({exc}); {fix}") from None
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise DataError(f"{path} must map each dataset name to an object; {fix}")
    bad = {k: v.get("role") for k, v in doc.items() if v.get("role") not in ROLES}
    if bad:
        name, role = next(iter(bad.items()))
        raise DataError(f"{path}: dataset {name!r} has role {role!r}, not one of {', '.join(ROLES)}; {fix}")
    present = {p.stem for p in root.glob("*.npz")}
    return {k: v["role"] for k, v in doc.items() if k in present}


def report_datasets(data_dir: str | Path) -> tuple[str, ...]:
    """The ``report`` datasets of ``data_dir``'s manifest that lie there as archives, sorted (() without one)."""
    roles = dataset_roles(data_dir) or {}
    return tuple(sorted(k for k, r in roles.items() if r == "report"))
