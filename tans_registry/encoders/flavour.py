"""The encoders and the backbone as MLflow models (``python_function`` flavour, no pickle).

Each is a folder written by ``mlflow.pyfunc.save_model`` with this module as its loader, a signature
and an input example; the weights are safetensors with a JSON config beside them:

    enc = mlflow.pyfunc.load_model("models:/tans-encoders@champion")
    enc.predict(images)        # uint8 [N, 32, 32, 3], one dataset's images -> its embedding [1, 128]
    bb = mlflow.pyfunc.load_model("models:/tans-backbone/1")
    bb.predict(images)         # -> per-image features [N, 256]

The encoders folder carries its backbone too, so one model turns a set of images into the dataset
embedding a query searches with. Each folder also carries the package's code (``code/tans_registry``,
its Python files only: ~0.3 MB), MLflow's code path, so it loads where tans-registry is not installed;
its requirements are the packages that code imports.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..data.readers import as_images
from ..mlmodel import code_copy, requirements
from .backbone import FEATURE_DIM, SmallBackbone, extract_features, load_backbone, save_backbone
from .models import TansEncoders

INPUT_SIZE = 32
KIND_FILE = "kind.json"


def _save(path: Path, data: Path, kind: str, output_dim: int, example: np.ndarray | None) -> Path:
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    (data / KIND_FILE).write_text(json.dumps({"kind": kind, "input_size": INPUT_SIZE}))
    out_rows = 1 if kind == "encoders" else -1
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, INPUT_SIZE, INPUT_SIZE, 3), "images")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (out_rows, output_dim),
                                   "embedding" if kind == "encoders" else "features")]))
    if example is None:
        example = np.zeros((2, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    code = code_copy(data.parent / "code")
    mlflow.pyfunc.save_model(str(path), loader_module=__name__, data_path=str(data), signature=signature,
                             input_example=as_images(example[:4], INPUT_SIZE), code_paths=[str(code)],
                             pip_requirements=requirements())
    return path


def save_encoders_model(path: Path, enc: TansEncoders, backbone: SmallBackbone,
                        example: np.ndarray | None = None) -> Path:
    """Write the encoders (with their backbone) as an MLflow model folder at ``path``."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "weights"
        enc.save(data)
        save_backbone(backbone, data)
        return _save(Path(path), data, "encoders", enc.cfg.embed_dim, example)


def save_backbone_model(path: Path, backbone: SmallBackbone, example: np.ndarray | None = None) -> Path:
    """Write the feature backbone as an MLflow model folder at ``path``."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "weights"
        save_backbone(backbone, data)
        return _save(Path(path), data, "backbone", FEATURE_DIM, example)


def _data_dir(model_dir: Path) -> Path:
    from mlflow.models import Model

    conf = Model.load(str(model_dir / "MLmodel")).flavors["python_function"]
    return model_dir / conf["data"]


def load_encoders(model_dir: Path) -> tuple[TansEncoders, SmallBackbone]:
    """The encoders and their backbone from a (downloaded) encoders model folder."""
    data = _data_dir(Path(model_dir))
    return TansEncoders.load(data), load_backbone(data)


class EncodersModel:
    """``predict(images)``: the dataset embedding ``[1, D]`` of one dataset's images (backbone features,
    then the query encoder's pooling)."""

    def __init__(self, enc: TansEncoders, backbone: SmallBackbone):
        self.enc, self.backbone = enc.eval(), backbone.eval()

    @torch.no_grad()
    def predict(self, model_input, params=None) -> np.ndarray:
        x = as_images(model_input, INPUT_SIZE)
        if len(x) == 0:
            raise ValueError("a dataset embedding needs at least one image")
        feats = torch.from_numpy(extract_features(self.backbone, x))[None]
        return self.enc.query(feats).numpy().astype(np.float32)


class BackboneModel:
    """``predict(images)``: per-image backbone features ``[N, 256]``."""

    def __init__(self, backbone: SmallBackbone):
        self.backbone = backbone.eval()

    def predict(self, model_input, params=None) -> np.ndarray:
        return extract_features(self.backbone, as_images(model_input, INPUT_SIZE))


def _load_pyfunc(data_path: str):
    """MLflow's entry point (``loader_module``): ``data_path`` is the model's weights folder."""
    data = Path(data_path)
    kind = json.loads((data / KIND_FILE).read_text())["kind"]
    if kind == "encoders":
        return EncodersModel(TansEncoders.load(data), load_backbone(data))
    return BackboneModel(load_backbone(data))
