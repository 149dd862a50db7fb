"""Every registered-model name of the product, defined here and nowhere else.

- ``zoo.<group>``: one registered model per meta-training group, one version per network (the Models
  page lists tens of groups rather than thousands of networks, and a group's versions browse together);
- ``tans-encoders`` (alias ``champion``) and ``tans-backbone``: the meta-trained encoders and their
  feature backbone;
- ``tans-finetuned.<dataset>`` and ``tans-onnx.<dataset>``: a query's fine-tuned winner and its ONNX
  export (the fine-tuning and export stages).

Names are restricted to ``[A-Za-z0-9_.-]`` so that no user-supplied text ever reaches an MLflow filter
string unescaped; a group or dataset name with other characters is slugged and suffixed with a short
hash of the original, so distinct names never share a model.
"""
from __future__ import annotations

import hashlib
import re

ZOO_PREFIX = "zoo."
ENCODERS_MODEL = "tans-encoders"
BACKBONE_MODEL = "tans-backbone"
FINETUNED_PREFIX = "tans-finetuned."
ONNX_PREFIX = "tans-onnx."
CHAMPION = "champion"  # the alias a query follows
_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


def _safe(prefix: str, name: str) -> str:
    if _SAFE.match(name):
        return prefix + name
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:80] or "group"
    return f"{prefix}{slug}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:8]}"


def zoo_model_name(group: str) -> str:
    """Registered-model name of a zoo group, e.g. ``zoo.mnist`` or ``zoo.mnist-t3``."""
    return _safe(ZOO_PREFIX, group)


def finetuned_model_name(dataset: str) -> str:
    """Registered-model name of a query dataset's fine-tuned winners, e.g. ``tans-finetuned.chinese_mnist``."""
    return _safe(FINETUNED_PREFIX, dataset)


def onnx_model_name(dataset: str) -> str:
    """Registered-model name of a query dataset's ONNX exports, e.g. ``tans-onnx.chinese_mnist``."""
    return _safe(ONNX_PREFIX, dataset)


def model_uri(name: str, version) -> str:
    """``models:/<name>/<version>`` (a version number, or ``@<alias>`` given as ``"@champion"``)."""
    return f"models:/{name}@{str(version)[1:]}" if str(version).startswith("@") else f"models:/{name}/{version}"


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None] | None:
    """``models:/name/3`` -> ``(name, "3", None)``, ``models:/name@champion`` -> ``(name, None, "champion")``;
    None for anything else."""
    m = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([A-Za-z0-9_.-]+))", uri)
    return None if m is None else (m.group(1), m.group(2), m.group(3))


def is_safe_name(name: str) -> bool:
    return bool(_SAFE.match(name))


def quote(value: str) -> str:
    """A single-quoted MLflow filter literal; refuses what the filter grammar cannot hold safely."""
    if not is_safe_name(value):
        raise ValueError(f"refusing to put {value!r} into a registry filter: only [A-Za-z0-9_.-] allowed")
    return f"'{value}'"
