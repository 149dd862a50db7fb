"""Models that cannot be swapped underneath: the sha256 of what was registered, checked before it runs.

At registration every version gets ``tans.sha256``: one digest over its model folder (each file's path and
sha256, in path order). A zoo version's folder holds ``network.json``, which records the sha256 of the
group's weights (``zoo_sha256``), so the tag covers the weights too. ``tans serve``, ``tans predict`` and
the loaders (:func:`~tans_registry.registry.models.download_uri`, ``load_pyfunc``, the zoo loaders) compute
the digest of what they downloaded and refuse a mismatch, naming the version, before running anything.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import TansError

DIGEST_TAG = "tans.sha256"
ZOO_DIGEST_KEY = "zoo_sha256"      # in a zoo version's network.json: its group's weights
ZOO_FILES = ("supernet.safetensors", "bn.safetensors", "zoo.json")
# a standalone zoo network (`tans zoo add`: a fine-tuned winner joined to the zoo): its own weights, no supernet
STANDALONE_FILES = ("network.safetensors", "zoo.json")


def weight_files(network: dict) -> tuple[str, ...]:
    """The files of a zoo version's ``zoo_artifacts`` folder that hold its weights (and are hashed)."""
    return STANDALONE_FILES if network.get("standalone") else ZOO_FILES
_CHUNK = 1 << 20
# written by MLflow into every download of a models:/ URI (the name and version it came from), never stored
# with the version's artifacts: not part of what was registered
DOWNLOAD_ONLY = ("registered_model_meta",)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def folder_digest(folder: str | Path, names: tuple[str, ...] | None = None) -> str:
    """sha256 over ``folder``'s files (or only ``names``; never :data:`DOWNLOAD_ONLY`): each relative path and
    its file's sha256, in path order. Independent of timestamps and of where the folder lies."""
    root = Path(folder)
    if root.is_file():
        files = [root]
        root = root.parent
    elif names is not None:
        files = [root / n for n in names if (root / n).is_file()]
    else:
        files = [p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() not in DOWNLOAD_ONLY]
    h = hashlib.sha256()
    for p in sorted(files, key=lambda q: q.relative_to(root).as_posix()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + file_sha256(p).encode() + b"\n")
    return h.hexdigest()


class TamperedModel(TansError):
    """A model's files differ from what was registered."""

    code = "MODEL_TAMPERED"


def check(folder: str | Path, expected: str | None, what: str, names: tuple[str, ...] | None = None) -> None:
    """Refuse ``folder`` when its digest is not ``expected`` (``None``: registered before digests were
    recorded, nothing to check)."""
    if not expected:
        return
    actual = folder_digest(folder, names)
    if actual != expected:
        raise TamperedModel(f"{what}: its files' sha256 is {actual[:16]}..., not the {expected[:16]}... recorded "
                            "at registration; the artifacts changed after they were registered and verified, so "
                            "nothing was run. Register or export the model again (`tans export`, `tans zoo "
                            "register`), or restore its artifacts")


def download(uri: str, dst: str | None = None) -> Path:
    """A local copy of the MLflow model behind ``uri``, checked against its version's ``tans.sha256``
    (:func:`download_version`)."""
    return download_version(uri, dst)[0]


def download_version(uri: str, dst: str | None = None) -> tuple[Path, str | None]:
    """``(local copy, version)`` of the model behind ``uri``, its files checked against the version's
    ``tans.sha256``: ``models:/name/3`` or ``models:/name@alias`` (the alias resolved once, then that version
    downloaded: the version checked is the version returned). Other ``models:/`` forms (``latest``, stages,
    logged-model ids) are refused: nothing tells which registered version they are. Any other URI
    (``runs:/``, a path) is downloaded unchecked, as nothing was registered for it (version None). A version
    registered before digests were recorded is loaded with a warning."""
    import logging
    import tempfile

    import mlflow

    from ..errors import RegistryError
    from . import client as C
    from .names import parse_model_uri

    parsed = parse_model_uri(uri)
    if parsed is None:
        if uri.startswith("models:/"):
            raise RegistryError(f"{uri}: name a registered version as models:/<name>/<version> or "
                                "models:/<name>@<alias> (e.g. @champion), so that its files can be checked against "
                                "the sha256 recorded at registration")
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst)), None
    name, version, alias = parsed
    mv = C.alias_version(name, alias) if alias is not None else C.client().get_model_version(name, version)
    if mv is None:
        raise RegistryError(f"{uri}: the model {name} has no alias `{alias}`; `mlflow ui` (or `tans zoo list`) "
                            "shows its versions and aliases")
    # always a private copy (a local store would otherwise hand back its own folder, which could change
    # between the check and the load)
    dst = dst or tempfile.mkdtemp(prefix="tans-model-")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}", dst_path=dst))
    expected = (mv.tags or {}).get(DIGEST_TAG)
    if not expected:
        logging.getLogger("tans_registry").warning(
            "%s (version %s of %s) was registered without a sha256 (before digests were recorded): its files are "
            "not checked; register or export it again to have them checked", uri, mv.version, name)
    check(local, expected, f"{uri} (version {mv.version} of {name})")
    return local, str(mv.version)
