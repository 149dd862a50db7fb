"""Helpers every stage uses to write an MLflow model folder: the package's own code as the model's code
path (its Python files only, ~0.3 MB, so the folder loads where tans-registry is not installed) and the
pinned requirements of that code (written out, never inferred: inference loads the model in a
subprocess at every save)."""
from __future__ import annotations

import shutil
from pathlib import Path


def code_copy(dst: Path) -> Path:
    """The package's Python files (no demo data, no caches) under ``dst/tans_registry``."""
    src = Path(__file__).resolve().parent
    shutil.copytree(src, dst / "tans_registry", ignore=lambda d, names: [
        n for n in names if not (n.endswith(".py") or (Path(d) / n).is_dir()) or n in ("__pycache__", "demo_data")])
    return dst / "tans_registry"


def pinned(*packages: str) -> list[str]:
    """``packages`` pinned to the installed versions (unpinned when one is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in packages:
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            out.append(pkg)
    return out


def requirements(*extra: str) -> list[str]:
    """The packages the loaders import, plus ``extra`` (all pinned to the installed versions)."""
    return pinned("torch", "safetensors", "numpy", "pillow", "mlflow", *extra)
