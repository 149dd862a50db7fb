"""The product's other registered models: the encoders and their backbone (and, with the coming
stages, fine-tuned winners and ONNX exports): registering a version, the ``champion`` alias, loading.

A stage writes its MLflow model folder with the flavour APIs into its own run's artifacts; this module
registers it (one ``create_model_version`` pointing at that folder), tags it and moves aliases.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from . import client as C
from .names import BACKBONE_MODEL, CHAMPION, ENCODERS_MODEL, finetuned_model_name, onnx_model_name, parse_model_uri

SCORE_TAG = "tans.val_score"      # encoders: selection score of the version's best checkpoint
METRIC_TAG = "tans.val_metric"    # ... and the validation metric it was driven by
BACKBONE_TAG = "tans.backbone_version"
VAL_DATASETS_TAG = "tans.val_datasets"  # encoders: the selection datasets its score was computed on
VAL_ACC_TAG = "tans.val_accuracy"  # fine-tuned: validation accuracy (what moves its champion)


@dataclass(frozen=True)
class ModelRef:
    """One registered version, as the stages need it."""

    name: str
    version: str
    run_id: str
    source: str
    tags: dict

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _ref(mv) -> ModelRef:
    return ModelRef(name=mv.name, version=str(mv.version), run_id=mv.run_id or "", source=mv.source,
                    tags=dict(mv.tags))


@C.boundary("read a champion alias")
def champion(name: str) -> ModelRef | None:
    """The version ``name@champion`` points at, or None when there is none."""
    mv = C.alias_version(name, CHAMPION)
    return None if mv is None else _ref(mv)


def champion_version(name: str) -> str | None:
    ref = champion(name)
    return None if ref is None else ref.version


@C.boundary("resolve a model URI")
def resolve(uri: str) -> ModelRef | None:
    """The version behind ``models:/name/3`` or ``models:/name@alias``; None for other URIs or a missing alias."""
    parsed = parse_model_uri(uri)
    if parsed is None:
        return None
    name, version, alias = parsed
    if alias is not None:
        mv = C.alias_version(name, alias)
        return None if mv is None else _ref(mv)
    return _ref(C.client().get_model_version(name, version))


@C.boundary("read a model version")
def get_version(name: str, version: str) -> ModelRef:
    return _ref(C.client().get_model_version(name, str(version)))


@C.boundary("download a registered model", "check that its artifacts exist (`mlflow ui` shows the version's source)",
            also=(OSError,))
def download(ref: ModelRef, dst: str | None = None) -> Path:
    """A local folder with the version's MLflow model (downloaded when the store is remote)."""
    from . import integrity

    return integrity.download(ref.uri, dst)


@C.boundary("download a model", "check the URI (`mlflow ui` lists the models and their versions)", also=(OSError,))
def download_uri(uri: str) -> Path:
    """A local folder with the MLflow model behind ``uri`` (``models:/name/3``, ``models:/name@champion``,
    ``runs:/...``), checked against the sha256 recorded at registration (:mod:`.integrity`)."""
    from . import integrity

    return integrity.download(uri)


@C.boundary("load a registered model as a pyfunc", also=(OSError,))
def load_pyfunc(uri: str):
    """``mlflow.pyfunc.load_model`` of ``uri``'s files once their sha256 is checked (:mod:`.integrity`),
    behind the registry boundary."""
    import mlflow

    from . import integrity

    return mlflow.pyfunc.load_model(str(integrity.download(uri)))


@C.boundary("register the encoders", "check the store and rerun `tans encoders train`")
def register_encoders(run_id: str, score: float, metric: str, val_datasets: tuple[str, ...], promote: bool = False,
                      encoders_path: str = "encoders", backbone_path: str = "backbone") -> dict:
    """Register the encoders and their backbone (MLflow model folders ``encoders_path`` and
    ``backbone_path`` of run ``run_id``); move ``tans-encoders@champion`` (and ``tans-backbone@champion``
    with it) when there is no champion, when ``promote``, or when ``score`` beats the champion's and the
    champion was scored the same way (the same selection datasets and metric): scores computed on other
    datasets or protocols are not compared. A store error reading the champion is an error."""
    c = C.client()
    val = ",".join(sorted(val_datasets))
    bb = _register(BACKBONE_MODEL, run_id, backbone_path, {}, None, "backbone")
    v = _register(ENCODERS_MODEL, run_id, encoders_path,
                  {SCORE_TAG: f"{score:.6f}", METRIC_TAG: metric, VAL_DATASETS_TAG: val,
                   BACKBONE_TAG: str(bb.version)}, None, "encoders")
    current = C.alias_version(ENCODERS_MODEL, CHAMPION)
    comparable = current is not None and current.tags.get(METRIC_TAG) == metric and \
        current.tags.get(VAL_DATASETS_TAG) == val
    promoted = current is None or promote or (comparable and score > _score(current, SCORE_TAG))
    if promoted:  # the backbone's champion is the champion encoders' own backbone
        C.move_alias(BACKBONE_MODEL, CHAMPION, bb.version)
        C.move_alias(ENCODERS_MODEL, CHAMPION, v.version)
    return {"encoders_version": int(v.version), "backbone_version": int(bb.version), "champion": promoted,
            "previous_champion": int(current.version) if current is not None else None,
            "champion_comparable": None if current is None else comparable}


def _score(version, tag: str) -> float:
    """A champion's score tag as a float; -inf without a champion or a readable score."""
    try:
        return float(version.tags.get(tag, "-inf")) if version is not None else -math.inf
    except ValueError:
        return -math.inf


def _register(name: str, run_id: str, artifact_path: str, tags: dict, description: str | None, kind: str):
    """A version of ``name`` from the model folder ``artifact_path`` of run ``run_id``, tagged with the
    sha256 of the folder as stored (:mod:`.integrity`: what serving and loading check)."""
    import tempfile

    import mlflow

    from . import integrity

    c = C.client()
    artifacts = c.get_run(run_id).info.artifact_uri  # first: an unknown run registers nothing
    with tempfile.TemporaryDirectory() as tmp:
        stored = mlflow.artifacts.download_artifacts(artifact_uri=f"{artifacts}/{artifact_path}", dst_path=tmp)
        digest = integrity.folder_digest(stored)
    C.ensure_model(name, tags={"tans.kind": kind})
    return c.create_model_version(name, f"{artifacts}/{artifact_path}", run_id=run_id,
                                  tags=tags | {integrity.DIGEST_TAG: digest}, description=description)


@C.boundary("register the fine-tuned winner", "check the store and run the query again")
def register_finetuned(dataset: str, run_id: str, artifact_path: str, val_accuracy: float, tags: dict,
                       description: str) -> dict:
    """A version of ``tans-finetuned.<dataset>`` from the MLflow model folder ``artifact_path`` of run
    ``run_id``; ``champion`` moves to it when its validation accuracy beats the current champion's on the
    same data (``tags["tans.fingerprint"]``), or when the champion was fine-tuned on other data."""
    name = finetuned_model_name(dataset)
    current = C.alias_version(name, CHAMPION)
    v = _register(name, run_id, artifact_path, tags | {VAL_ACC_TAG: f"{val_accuracy:.6f}"}, description, "finetuned")
    best = _settle_champion(name, tags.get("tans.fingerprint"))
    return {"model": name, "version": int(v.version), "model_uri": f"models:/{name}/{v.version}",
            "champion": best == int(v.version), "previous_champion": int(current.version) if current is not None else None}


def _settle_champion(name: str, fingerprint: str | None, rounds: int = 5) -> int:
    """Point ``name@champion`` at the best validation accuracy among the versions fine-tuned on
    ``fingerprint`` (the earlier version on a tie; a champion fine-tuned on other data is replaced), and read
    again until no new version appeared: writers racing on one model converge on the best (each one's last
    write follows a read that saw every version registered before it). Returns the champion's version."""
    seen, best = None, None
    for _ in range(rounds):
        same = [v for v in C.versions(name) if v.tags.get("tans.fingerprint") == fingerprint]
        numbers = sorted(int(v.version) for v in same)
        if numbers == seen:
            break
        best = max(same, key=lambda v: (_score(v, VAL_ACC_TAG), -int(v.version)))
        current = C.alias_version(name, CHAMPION)
        if current is None or str(current.version) != str(best.version):
            C.move_alias(name, CHAMPION, best.version)
        seen = numbers
    return int(best.version)


@C.boundary("register the ONNX export", "check the store and run the export again")
def register_onnx(dataset: str, run_id: str, artifact_path: str, tags: dict, description: str,
                  promote: bool, follow_champion: bool = False, alias: str | None = None) -> dict:
    """A version of ``tans-onnx.<dataset>`` from the MLflow (onnx flavour) model folder ``artifact_path``
    of run ``run_id``; ``champion`` moves to it when ``promote`` (with ``follow_champion``, a query's export:
    only if no export of the current fine-tuned champion is registered, which then keeps or takes it);
    ``alias`` (e.g. ``int8``, an int8 export's) moves to it in any case."""
    name = onnx_model_name(dataset)
    v = _register(name, run_id, artifact_path, tags, description, "onnx")
    if alias:
        C.move_alias(name, alias, v.version)
    champion = int(v.version)
    if promote:
        C.move_alias(name, CHAMPION, v.version)
        if follow_champion:
            champion = _follow_finetuned_champion(name, dataset, int(v.version))
    return {"model": name, "version": int(v.version), "model_uri": f"models:/{name}/{v.version}",
            "champion": promote and champion == int(v.version)}


def _follow_finetuned_champion(name: str, dataset: str, mine: int) -> int:
    """The ONNX champion is the export of the fine-tuned champion when one is registered (two queries
    exporting at once: the better one's export ends champion, whichever registers last)."""
    ft = C.alias_version(finetuned_model_name(dataset), CHAMPION)
    if ft is None:
        return mine
    parent = f"models:/{finetuned_model_name(dataset)}/{ft.version}"
    # int8 versions (tagged tans.quantization) share the parent but are never champion
    theirs = [int(v.version) for v in C.versions(name) if v.tags.get("tans.parent_model") == parent
              and "tans.quantization" not in v.tags]
    if not theirs or mine in theirs:
        return mine
    C.move_alias(name, CHAMPION, str(max(theirs)))
    return max(theirs)