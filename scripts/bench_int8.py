"""fp32 against int8 ONNX, side by side: latency (onnxruntime's CPU provider, batch 1 and batch 64, median
of ``--runs`` runs after ``--warmup`` warm-up runs) and test accuracy (the test split the `tans export
--int8` gate scores, the same label mapping), printed as a markdown table.

Builds nothing: it needs a work dir whose registry holds an int8 export (``tans export MODEL_URI --int8``
registers one as ``tans-onnx.<dataset>@int8``). MODEL_URI is that int8 version; the fp32 graph it was
quantized from is its ``tans.fp32_model`` tag (``--fp32 URI`` to compare against another), the dataset the
source model's own (``--data`` to override, ``--data-dir`` where datasets are found).

    .venv/bin/python scripts/bench_int8.py --work-dir . --data-dir data models:/tans-onnx.chinese_mnist@int8
    .venv/bin/python scripts/bench_int8.py --work-dir W --runs 50 --threads 1 models:/tans-onnx.digits/2
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tans_registry import tracking  # noqa: E402
from tans_registry.errors import TansError  # noqa: E402
from tans_registry.export.config import ExportConfig  # noqa: E402
from tans_registry.export.int8 import scoring_split  # noqa: E402
from tans_registry.export.onnx import INPUT, OUTPUT, read_metadata  # noqa: E402
from tans_registry.export.stage import source_dataset  # noqa: E402
from tans_registry.registry import models as registry_models  # noqa: E402
from tans_registry.serve.model import onnx_file  # noqa: E402
from tans_registry.zoo.onnx import session  # noqa: E402


def median_ms(sess, x: np.ndarray, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        sess.run([OUTPUT], {INPUT: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run([OUTPUT], {INPUT: x})
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def accuracy(sess, x: np.ndarray, y: np.ndarray) -> float:
    pred = np.concatenate([sess.run([OUTPUT], {INPUT: x[i:i + 64]})[0].argmax(1) for i in range(0, len(x), 64)])
    return float((pred == y).mean())


def size_mb(path: Path) -> float:
    """The graph and its external data files (MLflow saves the weights beside model.onnx)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    files = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    return (path.stat().st_size + sum((path.parent / f).stat().st_size for f in files)) / 1e6


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_uri", help="the int8 export, e.g. models:/tans-onnx.<dataset>@int8")
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--data", default=None, help="dataset to score [default: the source model's own]")
    ap.add_argument("--fp32", default=None, help="the fp32 graph [default: the int8 version's tans.fp32_model tag]")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads [default: its own]")
    args = ap.parse_args(argv)
    tracking.setup(args.work_dir)
    ref = registry_models.resolve(args.model_uri)
    if ref is None:
        raise TansError(f"{args.model_uri} is not a registered version: pass e.g. models:/tans-onnx.<dataset>@int8")
    fp32_uri = args.fp32 or ref.tags.get("tans.fp32_model")
    source = ref.tags.get("tans.parent_model")
    if not fp32_uri or not source:
        raise TansError(f"{args.model_uri} has no tans.fp32_model / tans.parent_model tag: is it an int8 export "
                        "(`tans export MODEL_URI --int8`)? Pass --fp32 and --data")
    network = registry_models.load_pyfunc(source).get_raw_model().network
    ds = source_dataset(network, ExportConfig(model_uri=source, data=args.data, data_dir=args.data_dir))
    rows = []
    for label, uri in (("fp32", fp32_uri), ("int8", args.model_uri)):
        path = onnx_file(uri)
        sess = session(path, device="cpu", threads=args.threads)
        x, y = scoring_split(read_metadata(path)["classes"], ds)
        x64 = np.resize(x, (64,) + x.shape[1:]) if len(x) < 64 else x[:64]
        rows.append((label, uri, size_mb(path), accuracy(sess, x, y), len(x),
                     median_ms(sess, x[:1], args.runs, args.warmup), median_ms(sess, x64, args.runs, args.warmup)))
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__} CPUExecutionProvider, {args.threads or 'default'} threads, "
          f"{os.cpu_count()} cores ({cpu_name()}); median of {args.runs} runs after "
          f"{args.warmup} warm-up runs; test split of {ds.name!r} ({rows[0][4]} images)\n")
    print("| graph | model | size (MB) | test accuracy | batch 1 (ms) | batch 64 (ms) | batch 64 (images/s) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for label, uri, mb, acc, _, b1, b64 in rows:
        print(f"| {label} | `{uri}` | {mb:.2f} | {acc:.4f} | {b1:.3f} | {b64:.2f} | {64000 / b64:,.0f} |")
    (_, _, _, a32, _, l1, l64), (_, _, _, a8, _, q1, q64) = rows
    print(f"\nint8 against fp32: accuracy {100 * (a8 - a32):+.2f} points; speed-up (fp32 ms / int8 ms) {l1 / q1:.2f}x "
          f"at batch 1, {l64 / q64:.2f}x at batch 64")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TansError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
