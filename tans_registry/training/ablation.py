"""``tans encoders bench``: the encoders' benchmark on the built zoo, the ablations against the baselines.

Every variant is trained with the same seed, the same held-out datasets and one shared backbone and set
of query features (:func:`~.stage.prepare`, timed apart). Each variant is a real
`tans/encoders` run (not registered: the champion does not move); the summary table and the JSON of
every row are artifacts of one run in `tans/bench`.

Rows: the default (mean pooling, hinge, topology-only model encoder, predictor with the ranking term,
retrieval with the dataset term), the ablations the issue asks for and a few of our own choices, then the untrained
encoder (same seed) and the heuristics. Columns: see :data:`COLUMNS` and README "The encoders".
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

from .. import tracking
from ..errors import ConfigError
from ..zoo.meta import dataset_params, save_meta_snapshot
from .config import VARIANTS, AblationConfig, AblationRecord
from .stage import prepare, train_prepared

log = logging.getLogger("tans_registry")

BASELINES = {"untrained encoder": "untrained", "pixel-statistics heuristic": "pixel_heuristic",
             "bigger-is-better heuristic": "size_heuristic", "best-average architecture": "best_average"}
# (column title, metric key, format)
COLUMNS = [("R@1", "val_recall_at_1", ".3f"), ("R@5", "val_recall_at_5", ".3f"),
           ("xtask R@5", "val_xtask_recall_at_5", ".3f"), ("xtask mean rank", "val_xtask_mean_rank", ".1f"),
           ("xgood R@1", "val_xgood_recall_at_1", ".3f"), ("xgood R@5", "val_xgood_recall_at_5", ".3f"),
           ("xgood mean rank", "val_xgood_mean_rank", ".1f"), ("weighted tau", "val_weighted_tau", ".3f"),
           ("top-1 regret", "val_regret_top1", ".1f"),
           ("predictor MAE", "val_pred_mae", ".3f"), ("s", "seconds", ".0f")]


def run_ablation(cfg: AblationConfig) -> AblationRecord:
    """Train every variant of ``cfg.variants`` (default: all of :data:`~.config.VARIANTS`) on one prepared
    meta-dataset; log the table to `tans/bench`. ``cfg.save_snapshot``: also write the zoo's meta-data
    there (:func:`~tans_registry.zoo.meta.save_meta_snapshot`)."""
    base = cfg.train
    wd, _ = tracking.setup(base.work_dir)
    t0 = time.time()
    exp_zoo = tracking.experiment_id("zoo", wd)
    prepared = prepare(base, exp_zoo)
    prep_s = time.time() - t0
    if cfg.save_snapshot:
        if base.snapshot:
            raise ConfigError("--save-snapshot writes the work dir's zoo; it cannot be combined with --snapshot")
        path = save_meta_snapshot(prepared[0] + prepared[1], cfg.save_snapshot, dataset_params(exp_zoo))
        log.info("bench: zoo snapshot written to %s", path)
    rows, val_names = {}, ()
    for name in cfg.variants or tuple(VARIANTS):
        log.info("bench: %s", name)
        rec = train_prepared(base.with_overrides(**VARIANTS[name]), prepared)
        rows[name] = rec.best | {"seconds": rec.seconds}
        val_names = rec.val_datasets
        if name == "default":
            rows |= {label: getattr(rec, key) for label, key in BASELINES.items()}
    out = {"rows": rows, "val_datasets": list(val_names), "prepare_seconds": prep_s,
           "n_train_groups": len(prepared[0]), "n_val_groups": len(prepared[1])}
    return AblationRecord(**out, run_id=_log_bench(base, out, wd))


def table(result: AblationRecord | dict) -> str:
    """The result as a Markdown table (``-``: not measured for that row)."""
    if isinstance(result, AblationRecord):
        result = result.to_dict()
    lines = ["| variant | " + " | ".join(c for c, _, _ in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for name, r in result["rows"].items():
        cells = []
        for _, key, fmt in COLUMNS:
            v = r.get(key)
            cells.append("-" if v is None or v != v else format(v, fmt))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"held-out datasets: {', '.join(result['val_datasets'])} ({result['n_val_groups']} groups; "
                 f"{result['n_train_groups']} training groups); backbone and query features shared by the "
                 f"variants: {result['prepare_seconds']:.0f} s (not in the s column)")
    return "\n".join(lines)


def _log_bench(base, result: dict, wd: Path) -> str:
    import mlflow

    exp = tracking.experiment_id("bench", wd)
    tags = {"tans.kind": "encoder-bench"} | ({"tans.project_run": tracking.PROJECT_RUN_ID}
                                              if tracking.PROJECT_RUN_ID else {})
    with mlflow.start_run(experiment_id=exp, run_name="bench-encoders", tags=tags) as run:
        mlflow.log_params({"steps": base.steps, "seed": base.seed, "val_datasets": ",".join(result["val_datasets"]),
                           "snapshot": base.snapshot or "",
                           "variants": ",".join(k for k in result["rows"] if k in VARIANTS)})
        default = result["rows"].get("default", {})
        mlflow.log_metrics({k: v for k, v in default.items() if isinstance(v, (int, float)) and v == v})
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "bench_encoders.md").write_text(table(result) + "\n")
            (Path(tmp) / "bench_encoders.json").write_text(json.dumps(result, default=float, indent=1))
            mlflow.log_artifacts(tmp)
        return run.info.run_id
