"""ONNX export: the wrapper with preprocessing inside the graph, the checker and the parity check
against PyTorch (``onnx``), and the stage that exports a registered model and registers the result
(``stage``: `tans export`). Configs and records in ``config``."""
