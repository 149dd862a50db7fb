"""Serving an export: the model and its request batcher (``model``), the HTTP app speaking MLflow's
scoring protocol and the Open Inference Protocol v2 (``app``: `tans serve`), and `tans predict`
(``predict``)."""
