"""The one function that names a zoo network's registered model, and what it may contain.

One registered model per meta-training group (``zoo.<group>``), one version per network: the Models
page lists tens of groups rather than thousands of networks, and a group's versions browse together.
Names are restricted to ``[A-Za-z0-9_.-]`` so that no user-supplied text ever reaches an MLflow filter
string unescaped; a group name with other characters is slugged and suffixed with a short hash of the
original, so distinct groups never share a model.
"""
from __future__ import annotations

import hashlib
import re

ZOO_PREFIX = "zoo."
_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


def zoo_model_name(group: str) -> str:
    """Registered-model name of a zoo group, e.g. ``zoo.mnist`` or ``zoo.mnist-t3``."""
    if _SAFE.match(group):
        return ZOO_PREFIX + group
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", group).strip("-.")[:80] or "group"
    return f"{ZOO_PREFIX}{slug}-{hashlib.sha1(group.encode('utf-8')).hexdigest()[:8]}"


def is_safe_name(name: str) -> bool:
    return bool(_SAFE.match(name))


def quote(value: str) -> str:
    """A single-quoted MLflow filter literal; refuses what the filter grammar cannot hold safely."""
    if not is_safe_name(value):
        raise ValueError(f"refusing to put {value!r} into a registry filter: only [A-Za-z0-9_.-] allowed")
    return f"'{value}'"
