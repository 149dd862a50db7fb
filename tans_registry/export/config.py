"""What the export stage takes and gives: :class:`ExportConfig` -> :func:`~.stage.export_model` ->
:class:`ExportRecord` (no torch here)."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from .. import params as P

STAGE = "export"
PARITY_TOLERANCE = 1e-4    # max abs logit difference onnxruntime vs PyTorch
MIN_PARITY_IMAGES = 64
CALIB_IMAGES = 256         # training images that calibrate the int8 activation ranges (--calib-images)
INT8_MAX_DROP = 0.01       # int8 may lose at most this much test accuracy (absolute) against fp32
TRITON_MAX_BATCH = 64      # max_batch_size of the Triton model configs (--triton-max-batch)
INT8_ALIAS = "int8"        # tans-onnx.<dataset>@int8: the latest int8 export that passed the gate
TRITON_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


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
    int8: bool = False                # also a static int8 (QDQ, per-channel) graph, gated on test accuracy
    calib_images: int = CALIB_IMAGES  # ... calibrated on this many training images (stratified, seeded)
    int8_max_drop: float = INT8_MAX_DROP  # refused when int8 test accuracy < fp32's minus this
    triton: str | None = None         # also write a Triton model repository here
    triton_name: str | None = None    # its model's name; None: tans_<dataset>
    triton_max_batch: int = TRITON_MAX_BATCH

    def __post_init__(self) -> None:
        P.store(self, model_uri=P.as_path(STAGE, "model_uri", self.model_uri, optional=False, flag=False),
                out=P.as_path(STAGE, "out", self.out), data=P.as_path(STAGE, "data", self.data),
                parity_images=P.as_int(STAGE, "parity_images", self.parity_images, MIN_PARITY_IMAGES),
                register=P.as_bool(STAGE, "register", self.register, flag="--no-register"),
                promote=P.as_bool(STAGE, "promote", self.promote, flag="--no-promote"),
                work_dir=P.as_path(STAGE, "work_dir", self.work_dir),
                data_dir=P.as_path(STAGE, "data_dir", self.data_dir),
                int8=P.as_bool(STAGE, "int8", self.int8),
                calib_images=P.as_int(STAGE, "calib_images", self.calib_images, 1),
                int8_max_drop=P.as_float(STAGE, "int8_max_drop", self.int8_max_drop, minimum=0, maximum=1,
                                         flag=False),
                triton=P.as_path(STAGE, "triton", self.triton),
                triton_name=self.triton_name,
                triton_max_batch=P.as_int(STAGE, "triton_max_batch", self.triton_max_batch, 1))
        if self.triton_name is not None and (not isinstance(self.triton_name, str)
                                             or not TRITON_NAME.match(self.triton_name)):
            P.fail(STAGE, "triton_name", "1 to 128 characters of [A-Za-z0-9_-] (a Triton model name)",
                   self.triton_name)


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
    # the parity gate's bound on max_abs_diff: 1e-4, or four times PyTorch's own float32 error where larger
    allowed_abs_diff: float = 1e-4
    input_name: str = "images"
    output_name: str = "logits"
    # --int8 (None without it): the int8 graph, its registered version (alias int8), the gate's figures
    int8_model_uri: str | None = None
    int8_path: str | None = None
    fp32_test_accuracy: float | None = None
    int8_test_accuracy: float | None = None
    test_images: int | None = None
    calib_images: int | None = None
    # --triton DIR (None without it): the repository and the model names written there
    triton_repository: str | None = None
    triton_models: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        return asdict(self)
