"""Encoder ablations on a built zoo: the same as `tans bench` (tans_registry/encoders/bench.py).

    .venv/bin/python scripts/bench_encoders.py --work-dir /tmp/bench/full --data-dir ../shared/datasets \\
        [--steps 300] [--val-datasets a,b] [--variants default,InfoNCE] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tans_registry.encoders.bench import run_bench, table  # noqa: E402
from tans_registry.encoders.train import EncoderTrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--val-datasets", default=None)
    ap.add_argument("--variants", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cfg = EncoderTrainConfig(steps=args.steps, work_dir=args.work_dir, data_dir=args.data_dir,
                             val_datasets=tuple(args.val_datasets.split(",")) if args.val_datasets else None)
    res = run_bench(cfg, args.variants.split(",") if args.variants else None,
                    progress=lambda m: print(m, file=sys.stderr))
    print(json.dumps(res, default=float) if args.json else table(res))


if __name__ == "__main__":
    main()
