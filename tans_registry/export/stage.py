"""``tans export MODEL_URI``: a registered network as verified ONNX, logged with MLflow's onnx flavour
and registered as ``tans-onnx.<dataset>`` (alias ``champion``), its tags pointing back to the source.

The source is loaded through its own MLflow model (a fine-tuned winner, or a zoo version); the export
is refused, and nothing registered, unless ``onnx.checker`` passes and onnxruntime agrees with PyTorch
on at least 64 of the dataset's training images (max abs logit difference <= 1e-4, or four times PyTorch's
own float32 error against float64 where that is larger; top-1 agreement 100%). The MLmodel asks for the CUDA provider, then the CPU one, and names ``onnxruntime-gpu`` (MLflow's
default would write ``onnxruntime``).

``--int8`` adds a static int8 graph (:mod:`.int8`), registered as a further version with alias ``int8``
only when it keeps the fp32 test accuracy (else the whole export is refused); ``--triton DIR`` writes a
Triton model repository of the graphs (:mod:`.triton`), renamed into place last.
"""
from __future__ import annotations

import json
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
from . import triton
from .config import INT8_ALIAS, ExportConfig, ExportRecord
from .int8 import export_int8
from .onnx import INPUT, OUTPUTS, check_parity, parity, to_onnx

ARTIFACT = "onnx"
INT8_ARTIFACT = "onnx-int8"


def parity_images(network: dict, cfg: ExportConfig, ds=None) -> np.ndarray:
    """Real images of the model's dataset (training split, stratified, seeded): never the test split.
    ``ds``: the dataset already loaded (a query's), else it is loaded from ``cfg.data`` or the model's own."""
    ds = source_dataset(network, cfg) if ds is None else ds
    per_class = -(-cfg.parity_images // ds.n_classes)
    x = ds.x_train[sample_per_class(ds, per_class, 0)]
    if len(x) < cfg.parity_images:
        x = np.concatenate([x, ds.x_train[:cfg.parity_images - len(x)]])
    return x


def source_dataset(network: dict, cfg: ExportConfig):
    """The dataset of the parity check and the int8 gate: ``cfg.data``, else the model's own."""
    spec = cfg.data or network.get("data") or network.get("dataset")
    if not spec:
        raise TansError(f"{cfg.model_uri} names no dataset for the parity check: pass --data", code="EXPORT_PARITY")
    seed = int(network.get("seed", 0))  # the query's: a folder splits into the same training images
    return load_dataset(spec, data_dir=cfg.data_dir or network.get("data_dir"), input_size=int(network["input_size"]),
                        seed=seed)


PYFUNC_LOADER = "tans_onnx_loader"


def save_onnx_model(onnx_path: Path, folder: Path, example: np.ndarray, n_classes: int) -> Path:
    """The MLflow model folder (onnx flavour) of an export: signature, input example, providers."""
    import mlflow.onnx
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    size = example.shape[1]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size, 3), INPUT)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_classes), name) for name in OUTPUTS]))
    graph = onnx.load(str(onnx_path))
    classes = json.loads(next(p.value for p in graph.metadata_props if p.key == "classes"))
    mlflow.onnx.save_model(graph, str(folder), signature=signature, input_example=example[:2],
                           metadata={"classes": classes, "outputs": list(OUTPUTS)},
                           pip_requirements=pinned("onnx", "onnxruntime-gpu", "numpy"),
                           onnx_execution_providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    # mlflow.pyfunc (and `mlflow models serve`) load it with the model's own loader (export/onnx_loader.py,
    # copied in as code): CUDA asked for only where the driver is, so no error-level noise on CPU machines
    from mlflow.models import Model

    code = Path(folder) / "code"
    code.mkdir(exist_ok=True)
    shutil.copyfile(Path(__file__).with_name("onnx_loader.py"), code / f"{PYFUNC_LOADER}.py")
    mlmodel = Model.load(str(Path(folder) / "MLmodel"))
    mlmodel.flavors["python_function"].update(loader_module=PYFUNC_LOADER, code="code")
    mlmodel.save(str(Path(folder) / "MLmodel"))
    return folder


def export_model(cfg: ExportConfig, run_id: str | None = None, module=None, network: dict | None = None,
                 ds=None, follow_champion: bool = False, calibration: np.ndarray | None = None) -> ExportRecord:
    """Export, verify, log and (``cfg.register``) register; ``run_id``: log into that run (a query's
    winner) instead of a new one in `tans/queries`; ``module``/``network``/``ds``: the source and its
    dataset already loaded. ``calibration`` (with ``cfg.int8``): uint8 images to calibrate the int8 graph
    on instead of the dataset's training images (Python only: :func:`.int8.export_int8`)."""
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
    dataset = str(network.get("dataset") or "model")
    client = mlflow.MlflowClient()
    own_run = run_id is None
    if own_run:  # first: an account without the edit right is refused before the export's work, not after it
        exp = tracking.experiment_id("queries", wd)
        tags = {"tans.kind": "export", "tans.source_model": cfg.model_uri, "tans.dataset": dataset}
        run_id = client.create_run(exp, run_name=f"export-{dataset}", tags=tags).info.run_id
    try:
        return _export(cfg, run_id, own_run, client, module, network, dataset, ds, follow_champion, calibration)
    except BaseException:
        if own_run:  # a refused or failed export leaves no run behind (deleted; FAILED where deleting is refused)
            try:
                client.delete_run(run_id)
            except Exception:  # noqa: BLE001  the store may be the very thing that failed
                try:
                    client.set_terminated(run_id, status="FAILED")
                except Exception:  # noqa: BLE001
                    pass
        raise


def _export(cfg: ExportConfig, run_id: str, own_run: bool, client, module, network: dict, dataset: str, ds,
            follow_champion: bool, calibration) -> ExportRecord:
    triton_names = []
    if cfg.triton:
        triton_names = [cfg.triton_name or triton.model_name(dataset)]
        triton_names += [f"{triton_names[0]}_int8"] if cfg.int8 else []
        triton.check_target(Path(cfg.triton), triton_names)
    if ds is None:
        ds = source_dataset(network, cfg)
    images = parity_images(network, cfg, ds)
    staging, int8 = None, None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = to_onnx(module, network, cfg.model_uri, Path(tmp) / "model.onnx")
            result = parity(onnx_path, module, network, images)
            check_parity(result, cfg.model_uri)
            if cfg.int8:  # gated before anything is logged: a refused int8 export leaves no run and no version
                int8 = export_int8(onnx_path, Path(tmp) / "model-int8.onnx", list(network["classes"]), ds,
                                   cfg.calib_images, cfg.int8_max_drop, cfg.model_uri, calibration)
            if cfg.triton:
                graphs = dict(zip(triton_names, [onnx_path] + ([int8.path] if int8 else [])))
                staging = triton.stage(Path(cfg.triton), graphs, cfg.triton_max_batch, network["classes"],
                                       cfg.model_uri)
            folder = save_onnx_model(onnx_path, Path(tmp) / ARTIFACT, images, len(network["classes"]))
            client.log_artifacts(run_id, str(folder), ARTIFACT)
            client.log_metric(run_id, "onnx_max_abs_diff", result.max_abs_diff)
            client.log_metric(run_id, "onnx_top1_agreement", result.top1_agreement)
            client.log_metric(run_id, "onnx_allowed_abs_diff", result.allowed)
            if int8 is not None:
                int8_folder = save_onnx_model(int8.path, Path(tmp) / INT8_ARTIFACT, images, len(network["classes"]))
                client.log_artifacts(run_id, str(int8_folder), INT8_ARTIFACT)
                for key in ("fp32_test_accuracy", "int8_test_accuracy", "test_images", "calib_images"):
                    client.log_metric(run_id, f"onnx_{key}", float(getattr(int8, key)))
            if own_run:
                client.set_terminated(run_id)
            artifacts = client.get_run(run_id).info.artifact_uri
            out_path = _local(f"{artifacts}/{ARTIFACT}/model.onnx")
            int8_path = _local(f"{artifacts}/{INT8_ARTIFACT}/model.onnx") if int8 is not None else None
            if cfg.out:
                Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(onnx_path, cfg.out)
                out_path = str(Path(cfg.out).resolve())
                if int8 is not None:  # --out model.onnx: model.int8.onnx beside it
                    int8_out = Path(cfg.out).with_suffix(".int8.onnx")
                    shutil.copyfile(int8.path, int8_out)
                    int8_path = str(int8_out.resolve())
        registered, registered_int8 = {}, {}
        if cfg.register:
            zoo_parent = network.get("zoo_parent") or (cfg.model_uri if "index" in network and "run_id" in network
                                                       else "")
            tags = {"tans.parent_model": cfg.model_uri, "tans.zoo_parent": str(zoo_parent),
                    "tans.dataset": dataset, "tans.onnx_max_abs_diff": f"{result.max_abs_diff:.3e}",
                    "tans.onnx_top1_agreement": f"{result.top1_agreement:.4f}",
                    "tans.onnx_allowed_abs_diff": f"{result.allowed:.1e}",
                    "tans.parity_images": str(result.n_images), "tans.query_run": str(network.get("query_run", ""))}
            description = (f"ONNX export of `{cfg.model_uri}`: uint8 images [N, H, W, 3] in (preprocessing inside the "
                           f"graph), logits out; metadata_props hold the classes, input size, mean and std. Verified "
                           f"against PyTorch on {result.n_images} images: max abs logit difference "
                           f"{result.max_abs_diff:.1e} (allowed {result.allowed:.1e}), top-1 agreement {result.top1_agreement:.0%}.")
            registered = registry_models.register_onnx(dataset, run_id, ARTIFACT, tags, description, cfg.promote,
                                                       follow_champion)
            if int8 is not None:
                registered_int8 = registry_models.register_onnx(
                    dataset, run_id, INT8_ARTIFACT, int8.tags(tags, registered["model_uri"]),
                    int8.description(registered["model_uri"], cfg.model_uri), promote=False, alias=INT8_ALIAS)
        triton_models = triton.publish(staging, Path(cfg.triton)) if staging is not None else None
        staging = None
    finally:
        triton.discard(staging)
    return ExportRecord(source_model_uri=cfg.model_uri, path=out_path, max_abs_diff=result.max_abs_diff, allowed_abs_diff=result.allowed,
                        top1_agreement=result.top1_agreement, parity_images=result.n_images,
                        model_uri=registered.get("model_uri"), champion=bool(registered.get("champion")),
                        run_id=run_id, int8_model_uri=registered_int8.get("model_uri"), int8_path=int8_path,
                        fp32_test_accuracy=None if int8 is None else int8.fp32_test_accuracy,
                        int8_test_accuracy=None if int8 is None else int8.int8_test_accuracy,
                        test_images=None if int8 is None else int8.test_images,
                        calib_images=None if int8 is None else int8.calib_images,
                        triton_repository=str(Path(cfg.triton).resolve()) if triton_models else None,
                        triton_models=triton_models)


def _local(uri: str) -> str:
    """An artifact URI as a local path when the store is local, else the URI."""
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme in ("", "file") else parsed.geturl()
