"""Compact, documented encodings for what the registry stores in tags (capped at 5,000 characters on
PostgreSQL).

An embedding tag is ``"f16:" + base64(float16 little-endian bytes)``; :func:`decode_embedding` is the
one way to read it back (float32). 1,325 values (45 topology + 1,280 functional) take 3,536 characters.
"""
from __future__ import annotations

import base64
import json

import numpy as np

TAG_LIMIT = 5000  # PostgreSQL's cap on registered-model and version tag values, measured
_PREFIX = "f16:"


def encode_embedding(vec) -> str:
    arr = np.asarray(vec, dtype=np.float32).ravel()
    if not np.isfinite(arr).all():
        raise ValueError("an embedding must be finite")
    out = _PREFIX + base64.b64encode(arr.astype("<f2").tobytes()).decode("ascii")
    if len(out) > TAG_LIMIT:
        raise ValueError(f"an embedding of {arr.size} values needs {len(out)} characters; tags hold {TAG_LIMIT}")
    return out


def decode_embedding(tag: str) -> np.ndarray:
    """The float32 vector behind an embedding tag written by :func:`encode_embedding`."""
    if not isinstance(tag, str) or not tag.startswith(_PREFIX):
        raise ValueError(f"not an embedding tag (expected the prefix {_PREFIX!r}): {str(tag)[:40]!r}")
    raw = base64.b64decode(tag[len(_PREFIX):].encode("ascii"), validate=True)
    return np.frombuffer(raw, dtype="<f2").astype(np.float32)


def compact_json(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def fit_tag(value: str, fallback: str) -> str:
    """``value`` when it fits in a tag, else ``fallback`` (which must)."""
    return value if len(value) <= TAG_LIMIT else fallback
