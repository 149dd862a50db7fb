"""BENCHMARKS.md's fine-tuning tables and the goals, from `tans bench` output.

    .venv/bin/python scripts/bench_table.py bench.json [more.json ...] [--method tans_hybrid]

Each file is what `tans bench --json` or `tans bench-chain --json` prints (its ``datasets`` are merged, later
files winning on a repeated name; a ``.gz`` file is read as gzip) or one dataset's ``bench-<name>.json``
artifact of a run in `tans/bench` (figures of one dataset, named by its ``dataset.name``): so runs of one
dataset each can be put together into one table. The goals are those of ``--method`` (default: the method
of `tans query`'s default re-ranking policy).
"""
from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from tans_registry.bench.report import markdown


def merged(paths: list[str]) -> tuple[dict, dict | None]:
    out: dict[str, dict] = {}
    intervals = None
    for p in paths:
        raw = Path(p).read_bytes()
        doc = json.loads(gzip.decompress(raw) if p.endswith(".gz") else raw)
        doc = doc.get("bench", doc) if isinstance(doc.get("bench"), dict) else doc  # `tans bench-chain --json`
        if "datasets" in doc:
            out.update(doc["datasets"])
            intervals = doc.get("intervals") or intervals
        elif "methods" in doc and "dataset" in doc:
            out[doc["dataset"]["name"]] = doc
        else:
            raise SystemExit(f"{p}: neither `tans bench --json` output nor a bench-<dataset>.json artifact")
    return out, (intervals if len(paths) == 1 else None)  # intervals pool one run's pairs only


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="`tans bench --json` or `tans bench-chain --json` outputs, or artifacts")
    ap.add_argument("--method", default=None, help="whose goals to report (default: `tans query`'s default policy)")
    args = ap.parse_args()
    print(markdown(*merged(args.files), method=args.method))
