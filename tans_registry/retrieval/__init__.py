"""The retrieval side: a dataset -> its query vector (``embed``), the one re-ranking policy
(``rerank``), embedding and caching the zoo index (``indexing``: the ``index build`` stage), and the
query stage (``search``). Configs and records in ``config`` (no torch)."""
