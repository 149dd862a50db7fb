"""ONNX export: the wrapper with preprocessing inside the graph, the checker and the parity check
against PyTorch (``onnx``), the stage that exports a registered model and registers the result
(``stage``: `tans export`), static int8 quantization gated on test accuracy (``int8``: `--int8`) and
Triton model repositories (``triton``: `--triton DIR`). Configs and records in ``config``."""
