"""Meta-validation: the protocols on held-out datasets (``protocols``), the baselines (``baselines``),
the metrics (``metrics``), and the evaluation of a set of encoders with the retrieval side's own
re-ranking policy (``evaluate``)."""
