"""`tans bench`: the fine-tuning benchmark."""
from __future__ import annotations

import json

import click

from ..bench.config import BenchConfig
from .options import INT, LIMIT, OrDefault, as_json_option, common_options, default, device_option, executor_options, given, split


@click.command("bench")
@common_options
@click.option("--holdout", type=OrDefault(click.STRING), default=None,
              help="Comma-separated reported datasets of --data-dir to benchmark on (none may be a dataset of the "
                   "zoo); `none`: only --query-data [default: the datasets the zoo's build held out, when no "
                   "--query-data is given].")
@click.option("--query-data", multiple=True, type=click.Path(),
              help="An archive (.npz) or an image folder (one sub-folder per class) never used for training "
                   "(repeatable; an empty value adds none); refused when its images are among the zoo's.")
@click.option("--epochs", type=OrDefault(float), default=default(BenchConfig, "epochs"), show_default=True,
              help="The full fine-tuning budget, the same for every method (a one-epoch budget is run too).")
@click.option("--max-train", type=OrDefault(INT), default=default(BenchConfig, "max_train"), show_default=True,
              help="Training images per query dataset (stratified; a fifth becomes the validation split).")
@click.option("--max-test", type=OrDefault(INT), default=default(BenchConfig, "max_test"), show_default=True,
              help="Test images per query dataset (stratified).")
@click.option("--ground-truth", type=OrDefault(INT), default=default(BenchConfig, "ground_truth"), show_default=True,
              help="Zoo networks fine-tuned at least, spread over the retrieval order and the size range (the "
                   "methods' picks are added); the oracle is the best of them.")
@click.option("--random-draws", type=OrDefault(INT), default=default(BenchConfig, "random_draws"), show_default=True,
              help="Random networks drawn (the random method's mean and spread).")
@click.option("--max-params", type=LIMIT, default=None,
              help="The constraint every method picks under ('none': no limit, the default).")
@click.option("--workers", type=OrDefault(INT), default=None,
              help="Jobs at once (fine-tunings; LogME groups), each in its own process [default: the machine's cores]; "
                   "Ray: tasks in flight at most [default: as the cluster's CPUs allow].")
@executor_options
@device_option
@click.option("--plots", type=click.Path(file_okay=False), default=None,
              help="Also write the PNG plots into this folder (they are always artifacts of the run).")
@click.option("--seed", type=OrDefault(INT), default=default(BenchConfig, "seed"), show_default=True)
@as_json_option
def bench(work_dir, data_dir, holdout, query_data, epochs, max_train, max_test, ground_truth, random_draws,
          max_params, workers, executor, ray_address, device, plots, seed, as_json):
    """Does the retrieved network win after fine-tuning, on datasets nothing was trained or tuned on?

    On a built work directory (zoo registered, encoders trained, index built), for each query dataset:
    every method picks a start under the same constraint (tans: retrieval top-1; tans_predictor;
    tans_logme: LogME re-rank of the re-ranked pool; logme_all: LogME of every network; random; best_average:
    the best mean-accuracy architecture cut from the shared base supernet; top_source: highest source
    accuracy; largest; scratch: the retrieved architecture, random weights); each start is fine-tuned once
    per budget (one epoch; --epochs), and reused by every method picking it. Prints test accuracy, top-1 and
    top-3 regret against the oracle (best of the ground truth), the epochs each start needs to reach
    scratch's final validation accuracy, query seconds and network forward passes, and each scorer's weighted
    Kendall tau against the fine-tuned accuracies. One run per dataset in `tans/bench` (metrics, JSON, plots).

    The encoders' ablation on the zoo's own groups is `tans encoders bench`.
    """
    from ..bench.report import table
    from ..bench.stage import run_bench

    if holdout is None:
        hold = None
    else:
        hold = () if holdout.strip().lower() == "none" else (split(holdout) or ())
    rec = run_bench(BenchConfig(holdout=hold, query_data=tuple(q for q in query_data if q.strip()), plots=plots, work_dir=work_dir,
                                data_dir=data_dir, max_params=max_params, executor=executor, ray_address=ray_address, device=device,
                                **given(epochs=epochs, max_train=max_train, max_test=max_test,
                                        ground_truth=ground_truth, random_draws=random_draws, workers=workers,
                                        seed=seed)))
    click.echo(json.dumps(rec.to_dict(), default=float) if as_json else table(rec))
