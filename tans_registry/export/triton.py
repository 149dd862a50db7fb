"""A Triton Inference Server model repository of an export (``tans export --triton DIR``)::

    DIR/<name>/config.pbtxt        platform onnxruntime_onnx, max_batch_size, inputs/outputs, dynamic batching
    DIR/<name>/labels.txt          the classes, one a line (the classification extension's label file)
    DIR/<name>/1/model.onnx        the verified fp32 graph
    DIR/<name>_int8/...            with --int8: the int8 graph that passed the gate

Names, data types and dims in ``config.pbtxt`` are read from the ONNX graph itself (dims without the
batch axis, which Triton adds through ``max_batch_size``). The models are written into a staging folder
next to ``DIR`` and renamed into place only when the export has been logged and registered: a refused or
failed export leaves ``DIR`` as it was.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from ..errors import TansError

PLATFORM = "onnxruntime_onnx"
LABELS = "labels.txt"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")

# onnx.TensorProto element types -> Triton data types
_TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16", 6: "TYPE_INT32",
                 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16", 11: "TYPE_FP64",
                 12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16"}


def model_name(dataset: str) -> str:
    """The default Triton model name of a dataset's export: ``tans_<dataset>``, [A-Za-z0-9_-] only."""
    return "tans_" + (_UNSAFE.sub("_", str(dataset)).strip("_") or "model")[:100]


def io_specs(path: Path) -> tuple[list[dict], list[dict]]:
    """The graph's inputs and outputs: ``{"name", "data_type", "dims"}`` each, dims without the batch
    axis (-1 for a dynamic one). Refused when the first axis is not a dynamic batch axis."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}

    def spec(value) -> dict:
        t = value.type.tensor_type
        if t.elem_type not in _TRITON_TYPES:
            raise TansError(f"{value.name}: ONNX element type {t.elem_type} has no Triton data type", code="EXPORT_TRITON")
        dims = list(t.shape.dim)
        if not dims or dims[0].HasField("dim_value"):
            raise TansError(f"{value.name} has no dynamic batch axis first: Triton's max_batch_size needs one; "
                            "export again with `tans export`", code="EXPORT_TRITON")
        return {"name": value.name, "data_type": _TRITON_TYPES[t.elem_type],
                "dims": [d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:]]}

    return ([spec(v) for v in graph.input if v.name not in initializers], [spec(v) for v in graph.output])


def config_pbtxt(name: str, path: Path, max_batch_size: int, labels: bool = True, source: str = "") -> str:
    """The ``config.pbtxt`` of the graph at ``path`` served as ``name``."""
    inputs, outputs = io_specs(path)

    def block(kind: str, specs: list[dict]) -> str:
        items = []
        for i, s in enumerate(specs):
            lines = [f'    name: "{s["name"]}"', f"    data_type: {s['data_type']}",
                     f"    dims: [ {', '.join(map(str, s['dims']))} ]"]
            if kind == "output" and labels and i == 0:
                lines.append(f'    label_filename: "{LABELS}"')
            items.append("  {\n" + "\n".join(lines) + "\n  }")
        return f"{kind} [\n" + ",\n".join(items) + "\n]\n"

    head = f"# written by tans export{f' from {source}' if source else ''}\n"
    return (f'{head}name: "{name}"\nplatform: "{PLATFORM}"\nmax_batch_size: {int(max_batch_size)}\n'
            + block("input", inputs) + block("output", outputs) + "dynamic_batching { }\n")


def check_target(repo: Path, names: list[str]) -> None:
    """Before any work: ``repo`` must be a folder (or not exist yet) in a writable place, and the model
    folders to replace must be folders."""
    if repo.exists() and not repo.is_dir():
        raise TansError(f"--triton {repo} is a file: pass a folder (the Triton model repository)", code="EXPORT_TRITON")
    for name in names:
        if (repo / name).exists() and not (repo / name).is_dir():
            raise TansError(f"{repo / name} is a file, not a Triton model folder: move it away or pass --triton-name",
                            code="EXPORT_TRITON")
    probe = repo
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise TansError(f"cannot write the Triton repository {repo}: pass a writable folder to --triton",
                        code="EXPORT_TRITON")


def stage(repo: Path, models: dict[str, Path], max_batch_size: int, classes, source: str = "") -> Path:
    """Write the model folders of ``models`` (Triton name -> .onnx file) into a new staging folder next
    to ``repo`` (same file system: :func:`publish` renames); returns the staging folder."""
    repo.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repo.name}.staging-", dir=repo.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would keep a Triton server of another user out
    try:
        for name, onnx_path in models.items():
            folder = staging / name
            (folder / "1").mkdir(parents=True)
            shutil.copyfile(onnx_path, folder / "1" / "model.onnx")
            (folder / LABELS).write_text("".join(" ".join(str(c).split()) + "\n" for c in classes), encoding="utf-8")
            (folder / "config.pbtxt").write_text(config_pbtxt(name, onnx_path, max_batch_size, source=source),
                                                 encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def publish(staging: Path, repo: Path) -> tuple[str, ...]:
    """Move the staged model folders into ``repo`` (a model folder already there is replaced whole);
    removes ``staging``. Returns the model names."""
    names = tuple(sorted(p.name for p in staging.iterdir()))
    if not repo.exists():
        os.rename(staging, repo)  # one rename: the repository appears complete
        return names
    for name in names:
        target = repo / name
        old = repo / f".{name}.old-{uuid.uuid4().hex[:8]}"
        if target.exists():
            os.rename(target, old)
        os.rename(staging / name, target)
        shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    return names


def discard(staging: Path | None) -> None:
    if staging is not None and staging.exists():
        shutil.rmtree(staging, ignore_errors=True)
