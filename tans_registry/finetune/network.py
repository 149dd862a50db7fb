"""A fine-tuned winner as an MLflow model (``python_function``, no pickle): its zoo architecture, a new
head for the query dataset's classes, its own weights (safetensors), preprocessing and classes in
``network.json``, and the package's code as its code path.

    model = mlflow.pyfunc.load_model("models:/tans-finetuned.chinese_mnist@champion")
    out = model.predict(images)                  # uint8 [N, 32, 32, 3] -> {"logits", "probabilities"}
    module = model.get_raw_model().module        # the nn.Module
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from torch import nn

from ..data.readers import as_images
from ..mlmodel import code_copy, requirements
from ..registry.pyfunc import ZooNetworkModel
from ..zoo.space import SupernetSpec, build_supernet, extract_subnet, validate_arch

DATA_FILE, WEIGHTS_FILE = "network.json", "weights.safetensors"


def rebuild(network: dict, state: dict | None = None) -> nn.Module:
    """The module of ``network`` (its arch and head), with ``state`` loaded when given (strict)."""
    spec = SupernetSpec.from_dict(network["supernet"] | {"n_classes": len(network["classes"])})
    module = extract_subnet(build_supernet(spec), validate_arch(network["arch"], spec))
    if state is not None:
        module.load_state_dict(state, strict=True)
    return module.eval()


def save_model(path: Path, module: nn.Module, network: dict, example: np.ndarray) -> Path:
    """Write the fine-tuned ``module`` as an MLflow model folder at ``path`` (``network``: arch,
    supernet spec, classes, input_size, mean, std, lineage)."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec
    from safetensors.torch import save_file

    size, k = int(network["input_size"]), len(network["classes"])
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size, 3), "images")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, k), name) for name in ("logits", "probabilities")]))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "network"
        data.mkdir()
        (data / DATA_FILE).write_text(json.dumps(network, indent=1))
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(data / WEIGHTS_FILE))
        code = code_copy(Path(tmp) / "code")
        mlflow.pyfunc.save_model(str(path), loader_module=__name__, data_path=str(data), signature=signature,
                                 input_example=as_images(example[:4], size), code_paths=[str(code)],
                                 pip_requirements=requirements("ofa"),
                                 metadata={"classes": list(network["classes"]), "outputs": ["logits", "probabilities"]})
    return Path(path)


def load_folder(data_path: Path) -> ZooNetworkModel:
    from safetensors.torch import load_file

    data = Path(data_path)
    network = json.loads((data / DATA_FILE).read_text())
    return ZooNetworkModel(rebuild(network, load_file(str(data / WEIGHTS_FILE))), network)


def _load_pyfunc(data_path: str) -> ZooNetworkModel:
    """MLflow's entry point (``loader_module``): ``data_path`` is the model's ``network`` folder."""
    return load_folder(Path(data_path))
