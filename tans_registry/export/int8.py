"""A verified fp32 export as static int8: QDQ format, per-channel weights, activations calibrated on real
training images, and refused unless it keeps the fp32 graph's test accuracy (``tans export --int8``).

- **Calibration**: ``calib_images`` of the model's dataset's *training* split (stratified over the model's
  classes, seeded), fed to the graph exactly as a client would: uint8 ``[N, H, W, 3]`` raw pixels.
- **Quantization**: onnxruntime's ``quant_pre_process`` (symbolic shape inference and graph optimisation),
  then ``quantize_static`` (``QuantFormat.QDQ``, ``per_channel=True``, MinMax calibration), the in-graph
  preprocessing left in fp32 (see :func:`preprocessing_nodes`). Activations uint8 and weights int8 with a
  reduced (7-bit) range: onnxruntime's fast x86 integer kernels are u8 x s8, and without VNNI (AVX2) their
  16-bit pair sums saturate on full 8-bit weights, which the range reduction avoids. On a 2-core AVX2 EPYC,
  with the single-operator fp32 graph (``zoo/onnx.py``), int8 activations and weights ran the largest subnet
  7x slower than fp32 at batch 64; u8 x s8 at full range faster than fp32 but 12 points below it on the test
  model; u8 x s8 7-bit within the gate (BENCHMARKS.md).
- **Gate**: both graphs on the dataset's *test* split (the onnxruntime CPU provider); refused when the
  int8 test accuracy is more than ``max_drop`` (0.01: one point) below the fp32 one. The caller registers
  nothing when this raises.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TansError
from .onnx import INPUT, OUTPUT

QUANTIZATION = "int8-qdq-per-channel-u8s8-7bit"
CALIB_BATCH = 32
EVAL_BATCH = 64
# the first ops of the network proper: everything between the graph input and these is preprocessing
_NETWORK_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


@dataclass(frozen=True)
class Int8Result:
    path: Path                   # the int8 .onnx file (checked with onnx.checker, metadata copied)
    fp32_test_accuracy: float
    int8_test_accuracy: float
    test_images: int
    calib_images: int
    max_drop: float

    @property
    def drop(self) -> float:
        return self.fp32_test_accuracy - self.int8_test_accuracy

    @property
    def ok(self) -> bool:
        return self.drop <= self.max_drop + 1e-9  # a tolerance for float noise: 0.01 is 0.01

    def tags(self, fp32_tags: dict, fp32_model_uri: str) -> dict:
        """The registered int8 version's tags: the fp32 export's (its parent model, dataset, parity), the
        fp32 version it was quantized from, the gate's figures and the quantization."""
        return fp32_tags | {"tans.fp32_model": fp32_model_uri, "tans.quantization": QUANTIZATION,
                            "tans.fp32_test_accuracy": f"{self.fp32_test_accuracy:.6f}",
                            "tans.int8_test_accuracy": f"{self.int8_test_accuracy:.6f}",
                            "tans.test_images": str(self.test_images), "tans.calib_images": str(self.calib_images),
                            "tans.int8_max_drop": f"{self.max_drop:g}"}

    def description(self, fp32_model_uri: str, source_uri: str) -> str:
        return (f"Static int8 (QDQ, per-channel weights) of `{fp32_model_uri}`, the ONNX export of `{source_uri}`: "
                f"activations calibrated on {self.calib_images} training images; test accuracy "
                f"{self.int8_test_accuracy:.4f} against the fp32 graph's {self.fp32_test_accuracy:.4f} on "
                f"{self.test_images} test images (onnxruntime CPU).")


def label_map(classes, ds) -> np.ndarray:
    """For each class index of ``ds``, the model's output index of the same class name (-1: not a class
    of the model). A zoo version of a class-subset task is scored on its own classes only."""
    mine = {str(c): i for i, c in enumerate(classes)}
    return np.array([mine.get(str(c), -1) for c in ds.classes], dtype=np.int64)


def scoring_split(classes, ds) -> tuple[np.ndarray, np.ndarray]:
    """The test images of ``ds`` whose class the model has, with labels as the model's output indices."""
    to_model = label_map(classes, ds)
    y = to_model[ds.y_test]
    keep = y >= 0
    if not keep.any():
        raise TansError(f"the dataset {ds.name!r} has no test image of the model's classes ({', '.join(map(str, classes[:5]))}"
                        f"{' ...' if len(classes) > 5 else ''}): the int8 gate cannot score it. Pass the model's "
                        "dataset with --data", code="EXPORT_INT8")
    return ds.x_test[keep], y[keep]


def calibration_images(classes, ds, n: int, seed: int = 0) -> np.ndarray:
    """Up to ``n`` training images of the model's classes, stratified (the classes take turns, each in a
    seeded random order) and seeded: all of them when the split has fewer."""
    y = label_map(classes, ds)[ds.y_train]
    rng = np.random.default_rng([seed, 15])
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(len(classes))]
    order = [idx[i] for i in range(max((len(p) for p in per_class), default=0)) for idx in per_class if i < len(idx)]
    if not order:
        raise TansError(f"the dataset {ds.name!r} has no training image of the model's classes to calibrate the int8 "
                        "graph on: pass the model's dataset with --data", code="EXPORT_INT8")
    return ds.x_train[np.sort(np.asarray(order[:n]))]


def _reader(images: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader

    class ImageReader(CalibrationDataReader):
        """The calibration images, in batches, as the graph's one input (uint8 NHWC)."""

        def __init__(self):
            self.rewind()

        def get_next(self):
            return next(self._batches, None)

        def rewind(self):
            self._batches = iter([{INPUT: images[i:i + CALIB_BATCH]} for i in range(0, len(images), CALIB_BATCH)])

    return ImageReader()


def preprocessing_nodes(model) -> list[str]:
    """Names of the nodes between the graph input and the first Conv/Gemm: the in-graph preprocessing
    (NHWC -> NCHW Transpose of the uint8 images, Cast to float, /255, - mean, / std)."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    seen, frontier = {}, [i.name for i in model.graph.input]
    while frontier:
        nxt = []
        for tensor in frontier:
            for node in consumers.get(tensor, []):
                if node.op_type in _NETWORK_OPS or node.name in seen:
                    continue
                seen[node.name] = node
                nxt.extend(node.output)
        frontier = nxt
    return list(seen)


def quantize(fp32_path: Path, out_path: Path, images: np.ndarray) -> Path:
    """``fp32_path`` as static int8 QDQ at ``out_path``, activations calibrated on ``images`` (uint8 NHWC);
    the fp32 graph's metadata_props are kept (``tans serve`` reads its classes), the full checker run."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        # The exporter's graph carries Identity and Constant nodes and the Shape/Gather/Concat chain of the
        # flatten's Reshape (the batch axis is dynamic). quant_pre_process runs symbolic shape inference
        # (the quantizer only quantizes tensors it knows to be float, and needs the weights' ranks for
        # per-channel axes) and onnxruntime's basic optimisations (constant folding, Identity removal):
        # the graph goes from ~270 to ~170 nodes, and without it the quantizer wraps ~130 more
        # QuantizeLinear/DequantizeLinear pairs around that plumbing (onnxruntime warns to run it first).
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre))
        pre_model = onnx.load(str(pre))
        # The preprocessing stays fp32, explicitly: its Transpose acts on the uint8 images (an integer
        # tensor, which the quantizer leaves alone anyway), and Cast, /255, -mean and /std are cheap
        # elementwise ops whose quantization would only add rounding before the first Conv. The first
        # Conv's input (the normalised image) is then the one quantized activation at the input, with a
        # scale calibrated on real pixels. With onnxruntime 1.31's QDQ op list this exclusion changes
        # nothing (Div and Sub are not quantized); it keeps the graph the same if a later version adds them.
        quantize_static(pre_model, str(out_path), _reader(images), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, reduce_range=True,
                        nodes_to_exclude=preprocessing_nodes(pre_model) + [n.name for n in pre_model.graph.node
                                                                            if n.op_type == "Softmax"],
                        calibration_providers=["CPUExecutionProvider"])
    fp32 = onnx.load(str(fp32_path), load_external_data=False)
    model = onnx.load(str(out_path))
    del model.metadata_props[:]
    for prop in list(fp32.metadata_props) + [onnx.StringStringEntryProto(key="quantization", value=QUANTIZATION),
                                             onnx.StringStringEntryProto(key="calib_images", value=str(len(images)))]:
        model.metadata_props.add().CopyFrom(prop)
    onnx.save(model, str(out_path))
    try:
        onnx.checker.check_model(str(out_path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise TansError(f"the int8 graph fails onnx.checker: {str(exc).splitlines()[0]}. Nothing was registered; "
                        "export without --int8", code="EXPORT_INT8") from exc
    return out_path


def accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of the graph at ``path`` on ``x`` (uint8 NHWC), onnxruntime's CPU provider."""
    from ..zoo.onnx import session

    sess = session(Path(path), device="cpu")
    pred = np.concatenate([sess.run([OUTPUT], {INPUT: x[i:i + EVAL_BATCH]})[0].argmax(1)
                           for i in range(0, len(x), EVAL_BATCH)])
    return float((pred == y).mean())


def export_int8(fp32_path: Path, out_path: Path, classes, ds, calib_images: int, max_drop: float, source_uri: str,
                calibration: np.ndarray | None = None) -> Int8Result:
    """Quantize the verified fp32 graph, score both on the test split of ``ds`` and gate: a
    :class:`TansError` (code ``EXPORT_INT8_ACCURACY``) when int8 loses more than ``max_drop``.
    ``calibration``: uint8 ``[N, H, W, 3]`` images to calibrate on instead of the training split's (a
    Python-only override, e.g. to show what a bad calibration does)."""
    if calibration is None:
        images = calibration_images(classes, ds, calib_images)
    else:
        images = np.ascontiguousarray(calibration)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != ds.x_train.shape[1:] or not len(images):
            raise TansError(f"calibration images must be uint8 [N, {', '.join(map(str, ds.x_train.shape[1:]))}] "
                            f"with N >= 1; got {images.dtype} {list(images.shape)}", code="EXPORT_INT8")
    quantize(fp32_path, out_path, images)
    x, y = scoring_split(classes, ds)
    result = Int8Result(path=out_path, fp32_test_accuracy=accuracy(fp32_path, x, y),
                        int8_test_accuracy=accuracy(out_path, x, y), test_images=len(x), calib_images=len(images),
                        max_drop=max_drop)
    if not result.ok:
        raise TansError(
            f"the int8 export of {source_uri} is refused: its test accuracy is {result.int8_test_accuracy:.2%} against "
            f"the fp32 graph's {result.fp32_test_accuracy:.2%} on {result.test_images} test images of {ds.name!r} (a "
            f"drop of {result.drop * 100:.2f} points; at most {max_drop * 100:.2f} allowed). Nothing was registered or "
            f"logged. Calibrate on more training images (--calib-images, {result.calib_images} now), or export without "
            "--int8 and serve the fp32 graph", code="EXPORT_INT8_ACCURACY")
    return result
