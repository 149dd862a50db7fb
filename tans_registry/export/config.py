"""What the export stage takes and gives: :class:`ExportConfig` -> :func:`~.stage.export_model` ->
:class:`ExportRecord` (no torch here)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .. import params as P

STAGE = "export"
PARITY_TOLERANCE = 1e-4    # max abs logit difference onnxruntime vs PyTorch
MIN_PARITY_IMAGES = 64


@dataclass(frozen=True)
class ExportConfig:
    model_uri: str                    # a fine-tuned winner (models:/tans-finetuned.<dataset>/...) or a zoo version
    out: str | None = None            # also copy the .onnx file here
    data: str | None = None           # the images of the parity check; None: the model's own dataset
    parity_images: int = MIN_PARITY_IMAGES
    register: bool = True             # register as tans-onnx.<dataset>
    promote: bool = True              # move tans-onnx.<dataset>@champion to it
    work_dir: str | None = None
    data_dir: str | None = None

    def __post_init__(self) -> None:
        P.store(self, model_uri=P.as_path(STAGE, "model_uri", self.model_uri, optional=False, flag=False),
                out=P.as_path(STAGE, "out", self.out), data=P.as_path(STAGE, "data", self.data),
                parity_images=P.as_int(STAGE, "parity_images", self.parity_images, MIN_PARITY_IMAGES),
                register=P.as_bool(STAGE, "register", self.register, flag="--no-register"),
                promote=P.as_bool(STAGE, "promote", self.promote, flag="--no-promote"),
                work_dir=P.as_path(STAGE, "work_dir", self.work_dir),
                data_dir=P.as_path(STAGE, "data_dir", self.data_dir))


@dataclass(frozen=True)
class ExportRecord:
    source_model_uri: str
    path: str                         # the .onnx file (in the run's artifacts, or --out)
    max_abs_diff: float               # logits, onnxruntime vs PyTorch, over the parity images
    top1_agreement: float
    parity_images: int
    model_uri: str | None = None      # models:/tans-onnx.<dataset>/<version> when registered
    champion: bool = False
    run_id: str | None = None
    input_name: str = "images"
    output_name: str = "logits"

    def to_dict(self) -> dict:
        return asdict(self)
