"""Fine-tuning a query's top candidates: the schedule (``schedule``), one candidate (``candidate``), the
fine-tuned network as an MLflow model (``network``), top-N -> winner -> registered (``stage``), and the
whole `tans query` (``pipeline``: rank -> fine-tune -> export). Configs and records in ``config``."""
