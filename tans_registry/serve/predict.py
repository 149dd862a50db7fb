"""``tans predict MODEL_URI IMAGES...``: class names for image files and folders, by an exported network."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import params as P
from .. import tracking
from ..data.readers import IMAGE_SUFFIXES, read_image
from ..errors import DataError
from .model import OnnxModel, softmax

STAGE = "predict"


@dataclass(frozen=True)
class PredictConfig:
    model_uri: str
    paths: tuple[str, ...]        # image files and folders (searched recursively)
    top: int = 3                  # classes listed per image
    device: str = "auto"
    work_dir: str | None = None

    def __post_init__(self) -> None:
        P.store(self, model_uri=P.as_path(STAGE, "model_uri", self.model_uri, optional=False, flag=False),
                paths=P.as_names(STAGE, "paths", self.paths, optional=False, flag=False),
                top=P.as_int(STAGE, "top", self.top, 1), device=P.as_choice(STAGE, "device", self.device,
                                                                            ("auto", "cpu", "cuda")),
                work_dir=P.as_path(STAGE, "work_dir", self.work_dir))


def image_files(paths) -> tuple[list[Path], list[Path]]:
    """The image files named or found under the folders named, and the files that are not images."""
    files, other = [], []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            (files if p.suffix.lower() in IMAGE_SUFFIXES else other).append(p)
        else:
            raise DataError(f"no such file or folder: {p}. Pass image files or folders of images")
    return files, other


def predict(cfg: PredictConfig) -> dict:
    """``{"model", "providers", "classes", "predictions": [{path, class, probability, top, logits,
    probabilities}], "skipped": [...]}`` (logits and probabilities in the order of ``classes``)."""
    tracking.setup(cfg.work_dir)
    files, other = image_files(cfg.paths)
    model = OnnxModel.load(cfg.model_uri, device=cfg.device)
    images, kept, skipped = [], [], [{"path": str(p), "why": "not an image file"} for p in other]
    for f in files:
        try:
            images.append(read_image(f, model.input_size))
            kept.append(f)
        except Exception as exc:  # noqa: BLE001  PIL raises many types on corrupt files
            skipped.append({"path": str(f), "why": f"unreadable: {type(exc).__name__}"})
    if not images:
        raise DataError(f"no readable image among {', '.join(cfg.paths)}"
                        + (f" ({len(skipped)} skipped)" if skipped else "") + ". Pass png/jpg/... files or folders")
    logits = np.concatenate([model.logits(np.stack(images[i:i + 64])) for i in range(0, len(images), 64)])
    probs = softmax(logits)
    rows = []
    for f, z, p in zip(kept, logits, probs):
        order = np.argsort(-p)[: cfg.top]
        rows.append({"path": str(f), "class": model.classes[order[0]], "probability": float(p[order[0]]),
                     "top": [{"class": model.classes[i], "probability": float(p[i])} for i in order],
                     "logits": z.tolist(), "probabilities": p.tolist()})
    return {"model": model.name, "providers": model.providers, "classes": model.classes, "predictions": rows,
            "skipped": skipped}
