"""BENCHMARKS.md's fine-tuning table and issue 13's goals, from `tans bench` output.

    .venv/bin/python scripts/bench_table.py bench.json [more.json ...]

Each file is what `tans bench --json` prints (its ``datasets`` are merged, later files winning on a
repeated name) or one dataset's ``bench-<name>.json`` artifact of a run in `tans/bench` (figures of one
dataset, named by its ``dataset.name``): so runs of one dataset each can be put together into one table.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tans_registry.bench.report import markdown


def merged(paths: list[str]) -> tuple[dict, dict | None]:
    out: dict[str, dict] = {}
    intervals = None
    for p in paths:
        doc = json.loads(Path(p).read_text())
        if "datasets" in doc:
            out.update(doc["datasets"])
            intervals = doc.get("intervals") or intervals
        elif "methods" in doc and "dataset" in doc:
            out[doc["dataset"]["name"]] = doc
        else:
            raise SystemExit(f"{p}: neither `tans bench --json` output nor a bench-<dataset>.json artifact")
    return out, (intervals if len(paths) == 1 else None)  # intervals pool one run's pairs only


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print(markdown(*merged(sys.argv[1:])))
