"""The MLflow model behind every zoo version: a tiny folder that points at its group's supernet.

A zoo version's source is ``registry/n<index>/`` inside its group run: an ``MLmodel`` (flavor
``python_function`` with this module as loader, plus a ``tans_zoo`` flavor) and ``network.json`` (the
arch config, preprocessing, classes, and the URI of the group's ``zoo/`` artifacts). Loading downloads
the supernet weights (safetensors) and materializes the subnet; nothing is unpickled.

    model = mlflow.pyfunc.load_model("models:/zoo.mnist/3")
    out = model.predict(images_uint8_NHWC)            # {"logits", "probabilities"}: [N, n_classes] each
    module = tans_registry.load_module("models:/zoo.mnist/3")            # the nn.Module
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import torch
from torch import nn

from ..data.readers import as_images
from ..zoo.tensors import to_tensor

FLAVOR = "tans_zoo"
DATA_FILE = "network.json"


def write_model_dir(out: Path, network: dict) -> Path:
    """Write the MLmodel folder of one zoo network (``network`` becomes network.json)."""
    import mlflow.pyfunc
    from mlflow.models import Model, ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    out.mkdir(parents=True, exist_ok=True)
    (out / DATA_FILE).write_text(json.dumps(network))
    size, k = int(network["input_size"]), len(network["classes"])
    model = Model()
    model.signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size, 3), "images")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, k), name) for name in ("logits", "probabilities")]))
    model.metadata = {"classes": list(network["classes"]), "outputs": ["logits", "probabilities"]}
    mlflow.pyfunc.add_to_model(model, loader_module=__name__, data=DATA_FILE)
    model.add_flavor(FLAVOR, network=DATA_FILE, arch_hash=network["arch_hash"], index=network["index"])
    model.save(str(out / "MLmodel"))
    return out


class ZooNetworkModel:
    """What ``mlflow.pyfunc.load_model`` wraps: ``predict`` maps uint8 images to ``{"logits", "probabilities"}``
    ([N, classes] each; the product's one output contract, README "Outputs")."""

    def __init__(self, module: nn.Module, network: dict):
        self.module = module.eval()
        self.network = network
        self.classes = list(network["classes"])

    def get_raw_model(self) -> "ZooNetworkModel":
        """What ``PyFuncModel.get_raw_model()`` returns: this wrapper (``.module``, ``.network``)."""
        return self

    def predict(self, model_input, params=None) -> dict[str, np.ndarray]:
        x = as_images(model_input, int(self.network["input_size"]))
        out = []
        with torch.no_grad():
            for start in range(0, len(x), 256):
                out.append(self.module(to_tensor(x[start:start + 256], self.network["mean"], self.network["std"])))
        logits = torch.cat(out) if out else torch.zeros((0, len(self.classes)))
        return {"logits": logits.numpy(), "probabilities": torch.softmax(logits, dim=1).numpy()}


def _local_zoo_dir(uri: str, scratch: Path, names: tuple[str, ...] | None = None) -> Path:
    """A private local copy (in ``scratch``) of the group's weight files (``names``; by default its
    supernet.safetensors, bn.safetensors, zoo.json): the files checked against their sha256 are the files loaded,
    even on a local store."""
    from .integrity import ZOO_FILES

    names = names or ZOO_FILES
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        import shutil

        src = Path(unquote(parsed.path))
        for name in names:
            shutil.copyfile(src / name, scratch / name)  # FileNotFoundError (an OSError) when one is missing
        return scratch
    import mlflow

    for name in names:
        mlflow.artifacts.download_artifacts(artifact_uri=f"{uri.rstrip('/')}/{name}", dst_path=str(scratch))
    return scratch


def standalone_module(folder: Path) -> nn.Module:
    """The module of a standalone zoo network (`tans zoo add`) from a local copy of its files: the supernet spec
    and arch of its zoo.json, its own weights (network.safetensors, loaded strictly)."""
    from safetensors.torch import load_file

    from ..zoo.space import SupernetSpec, build_supernet, extract_subnet, validate_arch

    table = json.loads((folder / "zoo.json").read_text())
    spec = SupernetSpec.from_dict(table["header"]["supernet"])
    module = extract_subnet(build_supernet(spec), validate_arch(table["networks"][0]["arch"], spec))
    module.load_state_dict(load_file(str(folder / "network.safetensors")), strict=True)
    return module.eval()


def module_from_network(network: dict) -> nn.Module:
    from ..zoo.store import network_from_dir
    from .client import wrapped

    from .integrity import weight_files

    with tempfile.TemporaryDirectory() as tmp:
        with wrapped(f"download the weights of zoo network {network.get('index')} of group {network.get('group')!r}",
                     "check that the group run's zoo/ artifacts exist, or rebuild the group with `tans zoo build`",
                     also=(OSError,)):
            folder = _local_zoo_dir(network["zoo_artifacts"], Path(tmp), weight_files(network))
        _check_weights(folder, network)
        if network.get("standalone"):
            return standalone_module(folder)
        return network_from_dir(folder, int(network["index"]), where=network["zoo_artifacts"])


def _check_weights(folder: Path, network: dict) -> None:
    """The group's weights against the sha256 its network.json recorded at registration (:mod:`.integrity`)."""
    from . import integrity

    integrity.check(folder, network.get(integrity.ZOO_DIGEST_KEY),
                    f"the weights of zoo group {network.get('group')!r} ({network.get('zoo_artifacts')})",
                    names=integrity.weight_files(network))


def _load_pyfunc(data_path: str) -> ZooNetworkModel:
    """MLflow's entry point (``loader_module``): ``data_path`` is the local network.json."""
    network = json.loads(Path(data_path).read_text())
    return ZooNetworkModel(module_from_network(network), network)


def load_modules(model_uris: list[str]) -> list[nn.Module]:
    """The eval-mode modules of several zoo versions, each group's supernet built once (what re-ranking a
    shortlist by its features needs)."""
    return [m for m, _ in load_networks(model_uris)]


def load_networks(model_uris: list[str]) -> list[tuple[nn.Module, dict]]:
    """:func:`load_modules` with each version's ``network.json`` (preprocessing, classes, lineage)."""
    from ..zoo.store import networks_from_dir
    from . import integrity
    from .client import wrapped

    networks = []
    with wrapped("download zoo versions", "check the URIs (`tans zoo list`, `mlflow ui`) and that their artifacts exist",
                 also=(OSError,)):
        for uri in model_uris:
            local = integrity.download(uri)
            networks.append(json.loads((local / DATA_FILE).read_text()))
    out: dict[int, nn.Module] = {}
    by_group: dict[str, list[int]] = {}
    for pos, net in enumerate(networks):
        by_group.setdefault(net["zoo_artifacts"], []).append(pos)
    for artifacts, positions in by_group.items():
        first = networks[positions[0]]
        with tempfile.TemporaryDirectory() as tmp:
            with wrapped("download a zoo group's weights", "rebuild the group with `tans zoo build`", also=(OSError,)):
                folder = _local_zoo_dir(artifacts, Path(tmp), integrity.weight_files(first))
            _check_weights(folder, first)
            if first.get("standalone"):  # one network a folder (`tans zoo add`)
                modules = [standalone_module(folder) for _ in positions]
            else:
                modules = networks_from_dir(folder, [int(networks[p]["index"]) for p in positions], where=artifacts)
        out.update(zip(positions, modules))
    return [(out[p], networks[p]) for p in range(len(networks))]


def load_network_info(model_uri: str) -> dict:
    """A zoo version's ``network.json`` (arch, classes, preprocessing, lineage) with its group's supernet
    spec (``supernet``) added: what rebuilding the network's module tree needs."""
    import mlflow

    from . import integrity
    from .client import wrapped

    with wrapped(f"read {model_uri}", "check the URI (`tans zoo list`, `mlflow ui`) and that its artifacts exist",
                 also=(OSError,)):
        local = integrity.download(model_uri)
        network = json.loads((local / DATA_FILE).read_text())
        zoo_json = mlflow.artifacts.load_dict(f"{network['zoo_artifacts'].rstrip('/')}/zoo.json")
    return network | {"supernet": zoo_json["header"]["supernet"], "model_uri": model_uri}


def load_module(model_uri: str) -> nn.Module:
    """The eval-mode ``nn.Module`` of a zoo version, e.g. ``models:/zoo.mnist/3``."""
    from . import integrity
    from .client import wrapped

    with wrapped(f"download {model_uri}", "check the URI (`tans zoo list`, `mlflow ui`) and that its artifacts exist",
                 also=(OSError,)):
        local = integrity.download(model_uri)
    return module_from_network(json.loads((local / DATA_FILE).read_text()))
