"""`tans encoders train|bench`."""
from __future__ import annotations

import json

import click

from ..encoders.config import POOLINGS, EncoderConfig
from ..training.config import LOSSES, VARIANTS, EncoderTrainConfig
from .options import INT, OrDefault, as_json_option, common_options, default, device_option, given, split

E, T = EncoderConfig, EncoderTrainConfig


def train_options(fn):
    """The options of one training run, shared by `train` and `bench` (defaults from the configs)."""
    for opt in reversed([
        click.option("--steps", type=OrDefault(INT), default=default(T, "steps"), show_default=True,
                     help="Training steps (one batch of every training group each)."),
        click.option("--seed", type=OrDefault(INT), default=default(T, "seed"), show_default=True),
    ]):
        fn = opt(fn)
    return fn


@click.group()
def encoders() -> None:
    """Train and benchmark the meta-contrastive encoders on the zoo."""


@encoders.command("train")
@common_options
@train_options
@click.option("--val-datasets", default=None,
              help="Comma-separated source datasets held out for meta-validation [default: a seeded fifth].")
@click.option("--pooling", type=OrDefault(click.Choice(POOLINGS)), default=default(E, "pooling"), show_default=True,
              help="Set pooling of the query encoder: mean (TANS) or attention (MetaD2A-style).")
@click.option("--loss", type=OrDefault(click.Choice(LOSSES)), default=default(T, "loss"), show_default=True,
              help="Contrastive loss: margin hinge over in-batch negatives (TANS) or InfoNCE.")
@click.option("--k-per-class", type=OrDefault(INT), default=default(E, "k_per_class"), show_default=True,
              help="Images per class in a dataset's query set. Stored with the encoders; `tans query` uses it.")
@click.option("--functional/--no-functional", default=default(E, "use_functional"), show_default=True,
              help="Feed the functional embedding to the model encoder as well as the topology (off by default: "
                   "it generalised worse to held-out datasets, BENCHMARKS.md).")
@click.option("--predictor/--no-predictor", default=default(E, "use_predictor"), show_default=True,
              help="Train the accuracy predictor.")
@click.option("--dataset-weight", type=OrDefault(float), default=default(E, "dataset_weight"), show_default=True,
              help="Retrieval: weight of the query's similarity to each network's source dataset (0: TANS's "
                   "query-to-model similarity alone).")
@click.option("--rank-weight", type=OrDefault(float), default=default(T, "rank_weight"), show_default=True,
              help="Weight of the predictor's within-dataset ranking term (0: MSE only).")
@click.option("--shortlist", type=OrDefault(INT), default=default(E, "shortlist"), show_default=True,
              help="Re-ranking: networks retrieved for the predictor. Stored with the encoders; `tans query` uses it.")
@click.option("--rerank-groups", type=OrDefault(INT), default=default(E, "rerank_groups"), show_default=True,
              help="Re-ranking: the predictor orders the shortlisted networks of the first N groups in retrieval "
                   "order (0: the whole shortlist). Stored with the encoders; `tans query` uses it.")
@click.option("--promote", is_flag=True,
              help="Move the champion alias to this version whatever the current champion scored (by default it "
                   "moves only on a better score computed on the same validation datasets and metric).")
@device_option
@as_json_option
def encoders_train(work_dir, data_dir, steps, seed, val_datasets, pooling, loss, k_per_class, functional, predictor,
                   dataset_weight, rank_weight, shortlist, rerank_groups, promote, device, as_json):
    """Train query encoder, model encoder and predictor; log them to `tans/encoders`; register them.

    Validation holds out whole datasets. The encoders are registered as `tans-encoders` (and the
    feature backbone as `tans-backbone`), both MLflow pyfunc models; the alias `champion` moves only
    when the validation score (Recall@5 of the strictest retrieval protocol the held-out datasets
    allow, plus the predictor's weighted tau) improves on the current champion's, computed on the same
    validation datasets and metric (or with --promote). Then run
    `tans index build` to embed the zoo with them.
    """
    from ..training.stage import train_encoders

    enc = EncoderConfig(use_functional=functional, use_predictor=predictor,
                        **given(pooling=pooling, dataset_weight=dataset_weight, shortlist=shortlist,
                                rerank_groups=rerank_groups, k_per_class=k_per_class))
    rec = train_encoders(EncoderTrainConfig(encoder=enc, val_datasets=split(val_datasets), work_dir=work_dir,
                                            data_dir=data_dir, promote=promote, device=device,
                                            **given(steps=steps, loss=loss, rank_weight=rank_weight, seed=seed)))
    if as_json:
        click.echo(json.dumps(rec.to_dict(), default=float))
        return
    nan = float("nan")
    click.echo(f"encoders run {rec.run_id} (validation datasets: {', '.join(rec.val_datasets)})")
    click.echo("R@k: own networks among all (TANS); xtask: networks of the other tasks of the same dataset, own "
               "networks removed; xgood: only their best quarter, after re-ranking")
    click.echo(f"{'':<18}{'R@1':>7}{'R@5':>7}{'xtask R@1':>11}{'xtask R@5':>11}{'xgood R@5':>11}{'w. tau':>8}"
               f"{'regret':>8}")
    for name, r in (("trained", rec.best), ("untrained", rec.untrained),
                    ("pixel heuristic", rec.pixel_heuristic), ("bigger is better", rec.size_heuristic),
                    ("best-average arch", rec.best_average)):
        def f(key, width, fmt=".3f"):
            v = r.get(key, nan)
            return f"{v:>{width}{fmt}}" if v == v else f"{'-':>{width}}"
        click.echo(f"{name:<18}{f('val_recall_at_1', 7)}{f('val_recall_at_5', 7)}{f('val_xtask_recall_at_1', 11)}"
                   f"{f('val_xtask_recall_at_5', 11)}{f('val_xgood_recall_at_5', 11)}{f('val_weighted_tau', 8)}"
                   f"{f('val_regret_top1', 8, '.1f')}")
    if rec.transfer:
        t = rec.transfer
        taus = ", ".join(f"{k} {v:.3f}" for k, v in t["selection_tau"].items()) or "none"
        click.echo(f"transfer predictor: {t['variant']} ({t['why']}; selection tau: {taus}), learnt from {t['records']} "
                   f"records of {t['tasks']} tasks ({t['skipped']} records left out: task data or start not found)")
    if rec.encoders_version is not None:
        click.echo(f"registered tans-encoders v{rec.encoders_version}"
                   + (" as champion" if rec.champion else
                      " (champion unchanged: its score was better)" if rec.champion_comparable else
                      f" (champion v{rec.previous_champion} unchanged: it was scored on other validation datasets or "
                      "another metric, so the scores do not compare; --promote replaces it)"))


@encoders.command("bench")
@common_options
@train_options
@click.option("--holdout", default=None,
              help="Comma-separated source datasets held out (meta-validation) [default: a seeded fifth].")
@click.option("--variants", default=None,
              help="Comma-separated variants to train [default: all]; `default` is the shipped configuration. "
                   "Choices: " + "; ".join(VARIANTS))
@click.option("--snapshot", type=click.Path(dir_okay=False), default=None,
              help="Learn from a zoo snapshot file (written by --save-snapshot) instead of the work dir's zoo; "
                   "its images are re-derived from --data-dir.")
@click.option("--save-snapshot", type=click.Path(dir_okay=False), default=None,
              help="Also write the work dir's zoo as a snapshot file (networks' descriptors and accuracies, "
                   "no weights: a few MB).")
@as_json_option
def encoders_bench(work_dir, data_dir, steps, seed, holdout, variants, snapshot, save_snapshot, as_json):
    """Benchmark the encoders on the built zoo: ablations against the baselines, on held-out datasets.

    Trains each variant (pooling, loss, functional embedding, predictor, positives, ranking term,
    retrieval's dataset term, re-ranking depth) with the same seed, held-out datasets and backbone;
    prints Recall@k under three protocols (own networks; networks of the other tasks of the held-out
    dataset; only their best quarter, after the predictor's re-ranking), the predictor's weighted
    Kendall tau within each held-out group, and the untrained encoder and pixel-statistics and
    bigger-is-better heuristics. Each variant is a `tans/encoders` run (not registered); the table is
    an artifact in `tans/bench`.
    """
    from ..training.ablation import run_ablation, table
    from ..training.config import AblationConfig

    cfg = AblationConfig(train=EncoderTrainConfig(val_datasets=split(holdout), work_dir=work_dir, data_dir=data_dir,
                                                  snapshot=snapshot, register=False, **given(steps=steps, seed=seed)),
                         variants=split(variants), save_snapshot=save_snapshot)
    rec = run_ablation(cfg)
    click.echo(json.dumps(rec.to_dict(), default=float) if as_json else table(rec))
