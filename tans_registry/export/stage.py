"""``tans export MODEL_URI``: a registered network as verified ONNX, logged with MLflow's onnx flavour
and registered as ``tans-onnx.<dataset>`` (alias ``champion``), its tags pointing back to the source.

The source is loaded through its own MLflow model (a fine-tuned winner, or a zoo version); the export
is refused, and nothing registered, unless ``onnx.checker`` passes and onnxruntime agrees with PyTorch
on at least 64 of the dataset's training images (max abs logit difference <= 1e-4, top-1 agreement
100%). The MLmodel asks for the CUDA provider, then the CPU one, and names ``onnxruntime-gpu`` (MLflow's
default would write ``onnxruntime``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from .. import tracking
from ..data import load_dataset
from ..encoders.backbone import sample_per_class
from ..errors import TansError
from ..mlmodel import pinned
from ..registry import models as registry_models
from .config import ExportConfig, ExportRecord
from .onnx import INPUT, OUTPUT, check_parity, parity, to_onnx

ARTIFACT = "onnx"


def parity_images(network: dict, cfg: ExportConfig, ds=None) -> np.ndarray:
    """Real images of the model's dataset (training split, stratified, seeded): never the test split.
    ``ds``: the dataset already loaded (a query's), else it is loaded from ``cfg.data`` or the model's own."""
    if ds is None:
        spec = cfg.data or network.get("data") or network.get("dataset")
        if not spec:
            raise TansError(f"{cfg.model_uri} names no dataset for the parity check: pass --data",
                            code="EXPORT_PARITY")
        seed = int(network.get("seed", 0))  # the query's: a folder splits into the same training images
        ds = load_dataset(spec, data_dir=cfg.data_dir or network.get("data_dir"),
                          input_size=int(network["input_size"]), seed=seed)
    per_class = -(-cfg.parity_images // ds.n_classes)
    x = ds.x_train[sample_per_class(ds, per_class, 0)]
    if len(x) < cfg.parity_images:
        x = np.concatenate([x, ds.x_train[:cfg.parity_images - len(x)]])
    return x


def save_onnx_model(onnx_path: Path, folder: Path, example: np.ndarray, n_classes: int) -> Path:
    """The MLflow model folder (onnx flavour) of an export: signature, input example, providers."""
    import mlflow.onnx
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    size = example.shape[1]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size, 3), INPUT)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_classes), OUTPUT)]))
    mlflow.onnx.save_model(onnx.load(str(onnx_path)), str(folder), signature=signature, input_example=example[:2],
                           pip_requirements=pinned("onnx", "onnxruntime-gpu", "numpy"),
                           onnx_execution_providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    return folder


def export_model(cfg: ExportConfig, run_id: str | None = None, module=None, network: dict | None = None,
                 ds=None, follow_champion: bool = False) -> ExportRecord:
    """Export, verify, log and (``cfg.register``) register; ``run_id``: log into that run (a query's
    winner) instead of a new one in `tans/queries`; ``module``/``network``/``ds``: the source and its
    dataset already loaded."""
    import mlflow

    wd, _ = tracking.setup(cfg.work_dir)
    if cfg.out:  # before any work: an unwritable --out must not fail after the run is logged
        out = Path(cfg.out)
        if out.is_dir() or not os.access(out.parent if out.parent.exists() else Path("."), os.W_OK):
            raise TansError(f"cannot write {cfg.out}: pass a writable file path to --out", code="EXPORT_OUT")
    if module is None:
        try:
            raw = registry_models.load_pyfunc(cfg.model_uri).get_raw_model()
        except NotImplementedError:
            raw = None
        if not hasattr(raw, "module") or not hasattr(raw, "network"):
            raise TansError(f"{cfg.model_uri} is not a network this product made (a zoo version or a fine-tuned "
                            "winner): nothing to export", code="EXPORT_SOURCE")
        module, network = raw.module, raw.network
    images = parity_images(network, cfg, ds)
    dataset = str(network.get("dataset") or "model")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = to_onnx(module, network, cfg.model_uri, Path(tmp) / "model.onnx")
        result = parity(onnx_path, module, network, images)
        check_parity(result, cfg.model_uri)
        folder = save_onnx_model(onnx_path, Path(tmp) / ARTIFACT, images, len(network["classes"]))
        client = mlflow.MlflowClient()
        if run_id is None:
            exp = tracking.experiment_id("queries", wd)
            tags = {"tans.kind": "export", "tans.source_model": cfg.model_uri, "tans.dataset": dataset}
            run_id = client.create_run(exp, run_name=f"export-{dataset}", tags=tags).info.run_id
            own_run = True
        else:
            own_run = False
        client.log_artifacts(run_id, str(folder), ARTIFACT)
        client.log_metric(run_id, "onnx_max_abs_diff", result.max_abs_diff)
        client.log_metric(run_id, "onnx_top1_agreement", result.top1_agreement)
        if own_run:
            client.set_terminated(run_id)
        logged = urlparse(f"{client.get_run(run_id).info.artifact_uri}/{ARTIFACT}/model.onnx")
        out_path = unquote(logged.path) if logged.scheme in ("", "file") else logged.geturl()
        if cfg.out:
            Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(onnx_path, cfg.out)
            out_path = str(Path(cfg.out).resolve())
    registered = {}
    if cfg.register:
        zoo_parent = network.get("zoo_parent") or (cfg.model_uri if "index" in network and "run_id" in network else "")
        tags = {"tans.parent_model": cfg.model_uri, "tans.zoo_parent": str(zoo_parent),
                "tans.dataset": dataset, "tans.onnx_max_abs_diff": f"{result.max_abs_diff:.3e}",
                "tans.onnx_top1_agreement": f"{result.top1_agreement:.4f}",
                "tans.parity_images": str(result.n_images), "tans.query_run": str(network.get("query_run", ""))}
        description = (f"ONNX export of `{cfg.model_uri}`: uint8 images [N, H, W, 3] in (preprocessing inside the "
                       f"graph), logits out; metadata_props hold the classes, input size, mean and std. Verified "
                       f"against PyTorch on {result.n_images} images: max abs logit difference "
                       f"{result.max_abs_diff:.1e}, top-1 agreement {result.top1_agreement:.0%}.")
        registered = registry_models.register_onnx(dataset, run_id, ARTIFACT, tags, description, cfg.promote,
                                                   follow_champion)
    return ExportRecord(source_model_uri=cfg.model_uri, path=out_path, max_abs_diff=result.max_abs_diff,
                        top1_agreement=result.top1_agreement, parity_images=result.n_images,
                        model_uri=registered.get("model_uri"), champion=bool(registered.get("champion")),
                        run_id=run_id)
