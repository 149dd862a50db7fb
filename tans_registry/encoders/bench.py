"""``tans bench``: the encoders' benchmark on the built zoo, the ablations against the baselines.

Every variant is trained with the same seed, the same held-out datasets and one shared backbone and set
of query features (:func:`~tans_registry.encoders.train.prepare`, timed apart). Each variant is a real
`tans/encoders` run (not registered: the champion does not move); the summary table and the JSON of
every row are artifacts of one run in `tans/bench`.

Rows: the default (mean pooling, hinge, topology-only model encoder, predictor with the ranking term,
retrieval with the dataset term), the ablations the issue asks for and a few of our own choices, then the untrained
encoder (same seed) and the heuristics. Columns: see :data:`COLUMNS` and README "The encoders".
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from .. import tracking
from ..errors import ConfigError
from .meta import dataset_params, save_meta_snapshot
from .train import EncoderTrainConfig, prepare, train_encoders

VARIANTS = {
    "default": {},
    "attention pooling": {"pooling": "attention"},
    "InfoNCE": {"loss": "infonce"},
    "with functional embedding": {"use_functional": True},
    "no predictor": {"use_predictor": False},
    "uniform positives (TANS)": {"positive_sharpness": 0.0},
    "no ranking term (MSE only)": {"rank_weight": 0.0},
    "predictor without topology": {"predictor_topology": False},
    "no dataset term (TANS retrieval)": {"dataset_weight": 0.0},
    "re-rank 2 groups": {"rerank_groups": 2},
    "re-rank the whole shortlist": {"rerank_groups": 0},
}
BASELINES = {"untrained encoder": "untrained", "pixel-statistics heuristic": "pixel_heuristic",
             "bigger-is-better heuristic": "size_heuristic"}
# (column title, metric key, format)
COLUMNS = [("R@1", "val_recall_at_1", ".3f"), ("R@5", "val_recall_at_5", ".3f"),
           ("xtask R@5", "val_xtask_recall_at_5", ".3f"), ("xtask mean rank", "val_xtask_mean_rank", ".1f"),
           ("xgood R@1", "val_xgood_recall_at_1", ".3f"), ("xgood R@5", "val_xgood_recall_at_5", ".3f"),
           ("xgood mean rank", "val_xgood_mean_rank", ".1f"), ("weighted tau", "val_weighted_tau", ".3f"),
           ("predictor MAE", "val_pred_mae", ".3f"), ("s", "seconds", ".0f")]


def run_bench(base: EncoderTrainConfig, variants: list[str] | None = None, progress=print,
              save_snapshot: str | None = None) -> dict:
    """Train every variant (default: all of :data:`VARIANTS`) on one prepared meta-dataset; returns
    ``{"rows": {name: metrics}, "val_datasets": [...], "prepare_seconds": s, "run_id": ...}``.
    ``save_snapshot``: also write the zoo's meta-data there (:func:`~.meta.save_meta_snapshot`)."""
    names = list(VARIANTS) if not variants else variants
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variants {unknown}; choose among: {', '.join(VARIANTS)}")
    base = replace(base, register=False)
    base.validate()
    wd, _ = tracking.setup(base.work_dir)
    t0 = time.time()
    exp_zoo = tracking.experiment_id("zoo", wd)
    prepared = prepare(base, exp_zoo)
    prep_s = time.time() - t0
    if save_snapshot:
        if base.snapshot:
            raise ConfigError("--save-snapshot writes the work dir's zoo; it cannot be combined with --snapshot")
        path = save_meta_snapshot(prepared[0] + prepared[1], save_snapshot, dataset_params(exp_zoo))
        progress(f"bench: zoo snapshot written to {path}")
    rows, val_names = {}, []
    for name in names:
        progress(f"bench: {name}")
        rec = train_encoders(replace(base, **VARIANTS[name]), prepared=prepared)
        rows[name] = rec["best"] | {"seconds": rec["seconds"]}
        val_names = rec["val_datasets"]
        if name == "default":
            rows |= {label: rec[key] for label, key in BASELINES.items()}
    out = {"rows": rows, "val_datasets": val_names, "prepare_seconds": prep_s,
           "n_train_groups": len(prepared[0]), "n_val_groups": len(prepared[1])}
    out["run_id"] = _log_bench(base, out, wd)
    return out


def table(result: dict) -> str:
    """The result as a Markdown table (``-``: not measured for that row)."""
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


def _log_bench(base: EncoderTrainConfig, result: dict, wd: Path) -> str:
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
