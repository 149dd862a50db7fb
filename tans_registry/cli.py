"""The ``tans`` command line: a thin click layer over the package's public functions.

Results go to stdout (``--json``: exactly one JSON document); logs and progress bars go to stderr.
Every :class:`TansError` becomes a one-line message and exit status 1; usage errors exit with 2.
"""
from __future__ import annotations

import functools
import json
import logging
import sys

import click

from .errors import TansError

log = logging.getLogger("tans_registry")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _IntLike(click.ParamType):
    """An integer that also accepts "20.0" (MLproject's numeric parameters are floats)."""

    name = "integer"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not an integer", param, ctx)
        if not f.is_integer():
            self.fail(f"{value!r} is not an integer", param, ctx)
        return int(f)


INT = _IntLike()


def _split(csv: str | None) -> tuple[str, ...] | None:
    """``"a, b,"`` -> ``("a", "b")``; empty or None -> None."""
    names = tuple(v.strip() for v in csv.split(",") if v.strip()) if csv else ()
    return names or None


def common_options(fn):
    """--work-dir and --data-dir, on every command (environment variables as fallbacks)."""

    @click.option("--work-dir", envvar="TANS_WORK_DIR", type=click.Path(file_okay=False), default=None,
                  help="Work directory holding mlflow.db and the artifacts [env TANS_WORK_DIR; "
                       "default ./tans-work]. MLFLOW_TRACKING_URI, when set, names the tracking store instead.")
    @click.option("--data-dir", envvar="TANS_DATA_DIR", type=click.Path(file_okay=False), default=None,
                  help="Folder of .npz datasets [env TANS_DATA_DIR; default: the demo set shipped "
                       "with the package].")
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TansError as exc:
            click.echo(f"error [{exc.code}]: {exc}", err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages to stderr.")
@click.version_option(package_name="tans-registry")
def main(verbose: bool) -> None:
    """tans: which network of our model zoo should we start from for this new dataset?

    The zoo lives in MLflow (SQLite in ./tans-work by default; PostgreSQL or a tracking server via
    MLFLOW_TRACKING_URI). Start with `tans data list`, then `tans zoo build --profile quick`.
    """
    _setup_logging(verbose)


# ----------------------------------------------------------------------------------------- data
@main.group()
def data() -> None:
    """Inspect the datasets of the data directory."""


@data.command("list")
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def data_list(work_dir, data_dir, as_json):
    """List the datasets (.npz archives) of the data directory."""
    from .data import list_datasets, resolve_data_dir

    rows = list_datasets(resolve_data_dir(data_dir))
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    click.echo(f"{'dataset':<24}{'classes':>8}{'train':>8}{'test':>7}  licence")
    for r in rows:
        click.echo(f"{r['name']:<24}{r['n_classes']:>8}{r['n_train']:>8}{r['n_test']:>7}  {r.get('license', '')}")


@data.command("show")
@common_options
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def data_show(work_dir, data_dir, dataset, as_json):
    """Load DATASET (a name, a .npz archive or an image folder) and describe it."""
    import numpy as np

    from .data import load_dataset

    ds = load_dataset(dataset, data_dir=data_dir)
    info = {"name": ds.name, "source": ds.source, "n_classes": ds.n_classes, "classes": list(ds.classes),
            "n_train": int(len(ds.x_train)), "n_test": int(len(ds.x_test)), "input_size": ds.input_size,
            "train_class_counts": np.bincount(ds.y_train, minlength=ds.n_classes).tolist(),
            "skipped_files": ds.n_skipped, "fingerprint": ds.fingerprint()}
    if as_json:
        click.echo(json.dumps(info))
        return
    for k, v in info.items():
        if k == "classes" and len(v) > 20:
            v = ", ".join(v[:20]) + f", ... ({len(v)} in all)"
        click.echo(f"{k:>20}: {v}")


# ------------------------------------------------------------------------------------------ zoo
@main.group()
def zoo() -> None:
    """Build and browse the model zoo."""


@zoo.command("build")
@common_options
@click.option("--profile", type=click.Choice(["quick", "bench"]), default="quick", show_default=True,
              help="quick: 4 demo datasets x 10 networks, minutes on 2 cores. bench: every dataset of "
                   "the data directory, 60 groups x 50 networks, hours.")
@click.option("--datasets", default=None, help="Comma-separated dataset names, replacing the profile's list.")
@click.option("--subnets", type=INT, default=None, help="Networks cut out of each group's supernet.")
@click.option("--groups", type=INT, default=None,
              help="Meta-training groups (class-subset tasks spread over the datasets).")
@click.option("--epochs", type=float, default=None, help="Training epochs per group (profile default otherwise).")
@click.option("--base-epochs", type=float, default=None,
              help="Epochs of the shared base supernet on the pooled datasets; 0 trains each group from scratch.")
@click.option("--executor", type=click.Choice(["local"]), default="local", show_default=True,
              help="Where groups are built (Ray fan-out arrives with the distributed extra).")
@click.option("--workers", type=INT, default=1, show_default=True,
              help="Groups built at once, each in its own process with its share of the CPU threads. "
                   "2 on a 2-core machine builds ~1.4x faster than 1 (small networks use 2 threads poorly).")
@click.option("--resume", is_flag=True, help="Skip groups already built with the same settings.")
@click.option("--only-groups", default=None,
              help="Comma-separated group names (e.g. gtsrb-t1,gtsrb-t2): build just these groups of the "
                   "build (the base supernet too, if it is missing); with --resume the rest follow later.")
@click.option("--seed", type=INT, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the build record as one JSON document.")
def zoo_build(work_dir, data_dir, profile, datasets, subnets, groups, epochs, base_epochs, executor, workers,
              resume, only_groups, seed, as_json):
    """Train one OFA supernet per group, cut out subnets, measure them, record them in MLflow.

    Each group is a run of the experiment `tans/zoo`. A killed build loses at most the group in
    progress: run again with --resume.
    """
    from dataclasses import asdict

    from .zoo import ZooConfig, build_zoo

    names = _split(datasets)
    rec = build_zoo(ZooConfig(profile=profile, datasets=names, subnets=subnets, groups=groups, epochs=epochs,
                              base_epochs=base_epochs, workers=workers, only_groups=_split(only_groups),
                              resume=resume, data_dir=data_dir, work_dir=work_dir, seed=seed))
    if as_json:
        click.echo(json.dumps(asdict(rec) | {"n_networks": rec.n_networks}))
        return
    click.echo(f"zoo: {rec.n_networks} networks in {len(rec.groups)} groups -> {rec.tracking_uri}")
    click.echo(f"{'group':<28}{'status':>8}{'nets':>6}{'best acc':>10}{'min acc':>9}{'logreg':>8}{'sec':>7}")
    for g in rec.groups:
        lr = f"{g.logreg_accuracy:.3f}" if g.logreg_accuracy is not None else "-"
        click.echo(f"{g.group:<28}{g.status:>8}{g.n_networks:>6}{g.best_accuracy:>10.3f}"
                   f"{g.min_accuracy:>9.3f}{lr:>8}{g.seconds:>7.0f}")


@zoo.command("register")
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print the registration record as one JSON document.")
def zoo_register(work_dir, data_dir, as_json):
    """Register every zoo network in the MLflow Model Registry (idempotent).

    One registered model per group (`zoo.<group>`), one version per network, tagged `tans.*`
    (dataset, embeddings, accuracy, n_params, flops, arch, ...), loadable with
    `mlflow.pyfunc.load_model("models:/zoo.<group>/<version>")`. A second run registers nothing.
    """
    from dataclasses import asdict

    from .registry import register_zoo

    rec = register_zoo(work_dir)
    if as_json:
        click.echo(json.dumps(asdict(rec)))
        return
    click.echo(f"registered {rec.created} new versions ({rec.existing} already there) -> {rec.tracking_uri}")
    for name, n in rec.models.items():
        click.echo(f"  {name}: +{n}")


@zoo.command("list")
@common_options
@click.option("--dataset", default=None, help="Only networks of this dataset or group.")
@click.option("--max-params", type=click.IntRange(min=1), default=None, help="Only networks with at most N parameters.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (a list of networks).")
def zoo_list(work_dir, data_dir, dataset, max_params, as_json):
    """List the networks of the zoo (the latest complete build of each group)."""
    from . import tracking
    from .zoo import list_networks

    wd, _ = tracking.setup(work_dir)
    nets = list_networks(tracking.experiment_id("zoo", wd), dataset=dataset, max_params=max_params)
    if as_json:
        click.echo(json.dumps([n.to_dict() for n in nets]))
        return
    if not nets:
        click.echo("the zoo is empty: build it with `tans zoo build --profile quick`", err=True)
        return
    click.echo(f"{'group':<28}{'#':>4}{'arch':>12}{'accuracy':>10}{'params':>11}{'MFLOPs':>9}")
    for n in nets:
        click.echo(f"{n.group:<28}{n.index:>4}{n.arch_hash:>12}{n.accuracy:>10.3f}{n.n_params:>11,}"
                   f"{n.flops / 1e6:>9.1f}")
    click.echo(f"{len(nets)} networks", err=True)


# ------------------------------------------------------------------------------------- encoders
@main.group()
def encoders() -> None:
    """Train the meta-contrastive encoders on the zoo."""


@encoders.command("train")
@common_options
@click.option("--steps", type=INT, default=300, show_default=True, help="Training steps (one batch of every training group each).")
@click.option("--val-datasets", default=None,
              help="Comma-separated source datasets held out for meta-validation [default: a seeded fifth].")
@click.option("--pooling", type=click.Choice(["mean", "attention"]), default="mean", show_default=True,
              help="Set pooling of the query encoder: mean (TANS) or attention (MetaD2A-style).")
@click.option("--loss", type=click.Choice(["hinge", "infonce"]), default="hinge", show_default=True,
              help="Contrastive loss: margin hinge over in-batch negatives (TANS) or InfoNCE.")
@click.option("--k-per-class", type=INT, default=20, show_default=True, help="Images per class in a query set.")
@click.option("--functional/--no-functional", default=False, show_default=True,
              help="Feed the functional embedding to the model encoder as well as the topology (off by default: "
                   "it generalised worse to held-out datasets, BENCHMARKS.md).")
@click.option("--predictor/--no-predictor", default=True, show_default=True, help="Train the accuracy predictor.")
@click.option("--dataset-weight", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Retrieval: weight of the query's similarity to each network's source dataset (0: TANS's "
                   "query-to-model similarity alone).")
@click.option("--rank-weight", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Weight of the predictor's within-dataset ranking term (0: MSE only).")
@click.option("--rerank-groups", type=INT, default=1, show_default=True,
              help="Re-ranking: the predictor orders the retrieved networks of the first N groups in retrieval "
                   "order (0: all retrieved networks). Stored with the encoders; `tans query` uses it.")
@click.option("--seed", type=INT, default=777, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the training record as one JSON document.")
def encoders_train(work_dir, data_dir, steps, val_datasets, pooling, loss, k_per_class, functional, predictor,
                   dataset_weight, rank_weight, rerank_groups, seed, as_json):
    """Train query encoder, model encoder and predictor; log them to `tans/encoders`; register them.

    Validation holds out whole datasets. The encoders are registered as `tans-encoders` (and the
    feature backbone as `tans-backbone`); the alias `champion` moves only when the validation score
    (Recall@5 of the strictest retrieval protocol the held-out datasets allow, plus the predictor's
    weighted tau) improves on the current champion's. Then run `tans index build` to embed the zoo with them.
    """
    from .encoders.train import EncoderTrainConfig, train_encoders

    val = _split(val_datasets)
    rec = train_encoders(EncoderTrainConfig(steps=steps, val_datasets=val, pooling=pooling, loss=loss,
                                            k_per_class=k_per_class, use_functional=functional,
                                            use_predictor=predictor, dataset_weight=dataset_weight,
                                            rank_weight=rank_weight, rerank_groups=rerank_groups,
                                            seed=seed, work_dir=work_dir,
                                            data_dir=data_dir))
    if as_json:
        click.echo(json.dumps(rec, default=float))
        return
    nan = float("nan")
    click.echo(f"encoders run {rec['run_id']} (validation datasets: {', '.join(rec['val_datasets'])})")
    click.echo("R@k: own networks among all (TANS); xtask: networks of the other tasks of the same dataset, own "
               "networks removed (the new-dataset case); xgood: only their best quarter, after re-ranking")
    click.echo(f"{'':<18}{'R@1':>7}{'R@5':>7}{'xtask R@1':>11}{'xtask R@5':>11}{'xgood R@5':>11}{'w. tau':>8}")
    for name, r in (("trained", rec["best"]), ("untrained", rec["untrained"]),
                    ("pixel heuristic", rec["pixel_heuristic"]), ("bigger is better", rec["size_heuristic"])):
        def f(key, width, fmt=".3f"):
            v = r.get(key, nan)
            return f"{v:>{width}{fmt}}" if v == v else f"{'-':>{width}}"
        click.echo(f"{name:<18}{f('val_recall_at_1', 7)}{f('val_recall_at_5', 7)}{f('val_xtask_recall_at_1', 11)}"
                   f"{f('val_xtask_recall_at_5', 11)}{f('val_xgood_recall_at_5', 11)}{f('val_weighted_tau', 8)}")
    if "encoders_version" in rec:
        click.echo(f"registered tans-encoders v{rec['encoders_version']}"
                   + (" as champion" if rec["champion"] else " (champion unchanged)"))


# ---------------------------------------------------------------------------------------- index
@main.group()
def index() -> None:
    """The cached index of the registered zoo (what every query searches)."""


@index.command("build")
@common_options
@click.option("--force", is_flag=True, help="Rebuild even when the cache matches the registry.")
@click.option("--json", "as_json", is_flag=True, help="Print the record as one JSON document.")
def index_build(work_dir, data_dir, force, as_json):
    """Embed the zoo with the champion encoders, then cache the registered versions as arrays.

    With `tans-encoders@champion` registered, every zoo version's `tans.model_embedding` and
    `tans.dataset_embedding` tags are rewritten with learned embeddings (`tans.encoder_version`
    names the encoder version); before that, they hold the raw descriptors.

    The cache is keyed by the registry's state and the encoder version; a query reuses it while
    both are unchanged and rebuilds it otherwise.
    """
    from . import tracking
    from .registry.embed import apply_encoders
    from .registry.index import build_index

    tracking.setup(work_dir)
    embedded = apply_encoders()
    idx, rec = build_index(work_dir, force=force)
    rec |= {"encoder_version": idx.encoder_version, "embedded": embedded}
    if as_json:
        click.echo(json.dumps(rec))
        return
    click.echo(f"index {rec['cache']}: {rec['versions']} versions of {rec['models']} zoo models in "
               f"{rec['seconds'] * 1000:.0f} ms -> {rec['path']}")


# ---------------------------------------------------------------------------------------- bench
@main.command("bench")
@common_options
@click.option("--holdout", default=None,
              help="Comma-separated source datasets held out (meta-validation) [default: a seeded fifth].")
@click.option("--steps", type=INT, default=300, show_default=True, help="Training steps of every variant.")
@click.option("--variants", default=None,
              help="Comma-separated variants to train [default: all]; `default` is the shipped configuration.")
@click.option("--snapshot", type=click.Path(dir_okay=False), default=None,
              help="Learn from a zoo snapshot file (written by --save-snapshot) instead of the work dir's zoo; "
                   "its images are re-derived from --data-dir.")
@click.option("--save-snapshot", type=click.Path(dir_okay=False), default=None,
              help="Also write the work dir's zoo as a snapshot file (networks' descriptors and accuracies, "
                   "no weights: a few MB).")
@click.option("--seed", type=INT, default=777, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
def bench(work_dir, data_dir, holdout, steps, variants, snapshot, save_snapshot, seed, as_json):
    """Benchmark the encoders on the built zoo: ablations against the baselines, on held-out datasets.

    Trains each variant (pooling, loss, functional embedding, predictor, positives, ranking term,
    retrieval's dataset term) with the same seed, held-out datasets and backbone; prints Recall@k under
    three protocols (own networks; networks of the other tasks of the held-out dataset; only their
    best quarter, after the predictor's re-ranking), the predictor's weighted Kendall tau within each
    held-out group, and the untrained encoder and pixel-statistics and bigger-is-better heuristics.
    Each variant is a `tans/encoders` run (not registered); the table is an artifact in `tans/bench`.
    """
    from .encoders.bench import VARIANTS, run_bench, table
    from .encoders.train import EncoderTrainConfig

    names = _split(variants)
    if names:
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            raise click.BadParameter(f"unknown {unknown}; choose among: {', '.join(VARIANTS)}", param_hint="--variants")
    val = _split(holdout)
    res = run_bench(EncoderTrainConfig(steps=steps, val_datasets=val, seed=seed, work_dir=work_dir, data_dir=data_dir,
                                       snapshot=snapshot),
                    names, progress=lambda m: click.echo(m, err=True), save_snapshot=save_snapshot)
    click.echo(json.dumps(res, default=float) if as_json else table(res))


# ---------------------------------------------------------------------------------------- query
@main.command("query")
@common_options
@click.argument("data")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Candidates to return.")
@click.option("--max-params", type=INT, default=None, help="Only networks with at most N parameters (0: no limit).")
@click.option("--max-flops", type=INT, default=None,
              help="Only networks with at most N FLOPs (torch's counter: 2 per multiply-add, at the zoo's "
                   "32x32 input; 0: no limit).")
@click.option("--exclude-dataset", "exclude", multiple=True,
              help="Leave this source dataset's networks out (repeatable; e.g. the query's own, to benchmark).")
@click.option("--rerank", type=click.Choice(["predictor", "none"]), default="predictor", show_default=True,
              help="Re-rank the retrieved shortlist by the predicted accuracy, or keep the retrieval order.")
@click.option("--shortlist", type=click.IntRange(min=1), default=100, show_default=True,
              help="Networks retrieved for re-ranking.")
@click.option("--rerank-groups", type=click.IntRange(min=0), default=None,
              help="Re-rank only the shortlisted networks of the first N groups in retrieval order (0: the whole "
                   "shortlist). Default: the value the champion encoders were trained and validated with.")
@click.option("--k-per-class", type=INT, default=20, show_default=True, help="Images per class embedded.")
@click.option("--seed", type=INT, default=0, show_default=True, help="Seed of the image sample (and of a folder's split).")
@click.option("--json", "as_json", is_flag=True, help="Print the query record as one JSON document.")
def query(work_dir, data_dir, data, top_k, max_params, max_flops, exclude, rerank, shortlist, rerank_groups,
          k_per_class, seed, as_json):
    """Rank the zoo's networks as starting points for DATA.

    DATA is a dataset name from the data directory, a .npz archive in the shared format, or a folder
    with one sub-folder of images per class (optionally under train/ and test/). The dataset is
    embedded with `tans-encoders@champion`, the zoo index is searched under the constraints, and the
    accuracy predictor re-ranks the shortlist. The query is recorded as a run in `tans/queries`
    (fingerprint, constraints, ranked candidates). Needs `tans encoders train` and `tans index build`.
    """
    from .query import QueryConfig, run_query

    for name, value in (("--max-params", max_params), ("--max-flops", max_flops)):
        if value is not None and value < 0:
            raise click.BadParameter(f"must be >= 0 (0: no limit); got {value}", param_hint=name)
    max_params, max_flops = max_params or None, max_flops or None
    rec = run_query(QueryConfig(data=data, top_k=top_k, max_params=max_params, max_flops=max_flops,
                                exclude_datasets=tuple(exclude), rerank=rerank, shortlist=shortlist,
                                rerank_groups=rerank_groups,
                                k_per_class=k_per_class, seed=seed, work_dir=work_dir, data_dir=data_dir))
    if as_json:
        click.echo(json.dumps(rec))
        return
    d = rec["dataset"]
    click.echo(f"{d['name']}: {d['classes']} classes, {d['train_images']} training images; "
               f"{rec['zoo_networks']} zoo networks, encoders v{rec['encoder_version']}, re-rank: {rec['rerank']}")
    click.echo(f"{'rank':>4}  {'model':<32}{'ver':>5}  {'source dataset':<22}{'source acc':>11}{'predicted':>10}"
               f"{'params':>11}{'MFLOPs':>8}")
    for c in rec["candidates"]:
        pred = f"{c['predicted_accuracy']:>10.3f}" if "predicted_accuracy" in c else f"{'-':>10}"
        click.echo(f"{c['rank']:>4}  {c['model']:<32}{c['version']:>5}  {c['group']:<22}{c['accuracy']:>11.3f}{pred}"
                   f"{c['n_params']:>11,}{c['flops'] / 1e6:>8.1f}")
    click.echo(f"query run {rec.get('run_id', '-')} (experiment tans/queries)")


if __name__ == "__main__":  # pragma: no cover
    main()
