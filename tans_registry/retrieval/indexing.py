"""``tans index build``: embed the zoo with the champion encoders, then cache the registered versions as
arrays (what every query searches).

With ``tans-encoders@champion`` registered, every current zoo version's ``tans.model_embedding`` and
``tans.dataset_embedding`` tags are rewritten with learned embeddings (``tans.encoder_version`` names
the encoder version); before that, they hold the raw descriptors. The cache is keyed by the registry's
state and the encoder version; a query reuses it while both are unchanged and rebuilds it otherwise.
"""
from __future__ import annotations

from .. import tracking
from ..registry.index import load_index
from .config import IndexConfig, IndexRecord
from .embed import embed_zoo


def build_index(cfg: IndexConfig = IndexConfig()) -> IndexRecord:
    """Re-embed the zoo with the champion (versions it already embedded are skipped) and cache the index."""
    wd, _ = tracking.setup(cfg.work_dir)
    embedded = embed_zoo(progress=cfg.progress)
    idx, rec = load_index(wd, force=cfg.force)
    return IndexRecord(cache=rec["cache"], versions=rec["versions"], models=rec["models"], seconds=rec["seconds"],
                       path=rec["path"], key=rec["key"], encoder_version=idx.encoder_version, embedded=embedded)
