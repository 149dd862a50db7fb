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
@click.option("--seed", type=OrDefault(INT), default=default(BenchConfig, "seed"), show_default=True,
              help="The first seed: the datasets are benchmarked at --seeds seeds from it.")
@click.option("--seeds", type=OrDefault(INT), default=default(BenchConfig, "seeds"), show_default=True,
              help="Seeds per dataset, each drawing its own stratified training sample, validation split, head "
                   "init and random draws; figures are means over seeds with their spread, and the paired "
                   "differences get pooled 95%% bootstrap intervals over the (dataset, seed) pairs.")
@click.option("--resume", is_flag=True,
              help="Reuse each (dataset, seed) already benchmarked to the end with the same settings, encoders and "
                   "zoo (a killed benchmark loses at most the dataset seed in progress).")
@click.option("--selection", is_flag=True,
              help="Benchmark the selection datasets instead (training datasets of the zoo, mnist and pacs_sketch, "
                   "each with its own groups left out of every method's candidates): the figures the defaults are "
                   "chosen by, never reported as results. Not with --holdout or --query-data.")
@click.option("--head-first/--no-head-first", default=default(BenchConfig, "head_first"), show_default=True,
              help="Fine-tune every start head-first: its new head fitted on its frozen features (the linear probe) "
                   "before everything is trained. The default is the product's recipe, as `tans query` fine-tunes.")
@as_json_option
def bench(work_dir, data_dir, holdout, query_data, epochs, max_train, max_test, ground_truth, random_draws,
          max_params, workers, executor, ray_address, device, plots, seed, seeds, resume, selection, head_first,
          as_json):
    """Does the retrieved network win after fine-tuning, on datasets nothing was trained or tuned on?

    On a built work directory (zoo registered, encoders trained, index built), for each query dataset and
    each of --seeds seeds: every method picks a start under the same constraint (tans: retrieval top-1;
    tans_predictor; tans_logme: LogME re-rank of the re-ranked pool; tans_hybrid: the learned ranking's
    first networks across groups and the generalist, re-ranked by a transferability score; logme_all: LogME
    (and LEEP, NCE) of every network;
    random; best_average: the best mean-accuracy architecture cut from the shared base supernet; top_source:
    highest source accuracy; largest; scratch: the retrieved architecture, random weights). Every start is
    prepared alike (batch norm re-estimated on the same query training images, a new head from the same
    seed; LogME scores it so prepared), probed linearly on its frozen features, and fine-tuned once per
    budget (one epoch; --epochs), reused by every method picking it.

    Prints test accuracy (mean ±sd over seeds), the start's linear probe, top-1 and top-3 regret against
    the oracle (the ground-truth network with the best validation accuracy, scored by its test accuracy;
    the best test accuracy is shown as an upper bound), logistic regression on the same training images'
    pixels (a floor), the epochs each start needs to reach scratch's final validation accuracy, query
    seconds and forward passes, each scorer's weighted Kendall tau against the fine-tuned accuracies, and
    pooled paired 95% bootstrap intervals over the (dataset, seed) pairs (tans minus best_average and
    random, each method's regret). In `tans/bench`: a run per dataset, one per seed under it, and one per
    start and budget with its validation curve by epoch; the JSON and plots (incl. a forest plot).

    The encoders' ablation on the zoo's own groups is `tans encoders bench`.
    """
    from ..bench.report import table
    from ..bench.stage import run_bench

    if holdout is None:
        hold = None
    else:
        hold = () if holdout.strip().lower() == "none" else (split(holdout) or ())
    rec = run_bench(BenchConfig(holdout=hold, query_data=tuple(q for q in query_data if q.strip()), plots=plots, resume=resume,
                                selection=selection, head_first=head_first, work_dir=work_dir,
                                data_dir=data_dir, max_params=max_params, executor=executor, ray_address=ray_address, device=device,
                                **given(epochs=epochs, max_train=max_train, max_test=max_test,
                                        ground_truth=ground_truth, random_draws=random_draws, workers=workers,
                                        seed=seed, seeds=seeds)))
    click.echo(json.dumps(rec.to_dict(), default=float) if as_json else table(rec))


@click.command("bench-chain")
@common_options
@click.option("--profile", type=click.Choice(["bench", "quick"]), default="bench", show_default=True,
              help="The zoo build's profile (quick: minutes, for a trial of the chain on the demo data).")
@click.option("--seeds", type=OrDefault(INT), default=default(BenchConfig, "seeds"), show_default=True,
              help="Seeds per reported dataset (see `tans bench --help`).")
@click.option("--epochs", type=OrDefault(float), default=default(BenchConfig, "epochs"), show_default=True,
              help="The benchmark's full fine-tuning budget (a one-epoch budget is run too).")
@click.option("--resume", is_flag=True,
              help="Go on where a killed chain stopped: finished zoo groups, registered versions, the cached index, "
                   "the champion encoders (when the zoo is unchanged) and finished (dataset, seed) pairs are kept.")
@click.option("--workers", type=OrDefault(INT), default=None,
              help="Jobs at once for the zoo build (groups) and the benchmark (fine-tunings, LogME groups) "
                   "[default: one per core; Ray: as the cluster's CPUs allow].")
@executor_options
@device_option
@click.option("--plots", type=click.Path(file_okay=False), default=None,
              help="Also write the benchmark's PNG plots into this folder.")
@as_json_option
def bench_chain(work_dir, data_dir, profile, seeds, epochs, resume, workers, executor, ray_address, device, plots,
                as_json):
    """The whole benchmark from nothing, in one command: `tans zoo build --profile bench`, `tans zoo register`,
    `tans zoo transfer`, `tans encoders train`, `tans index build`, then `tans bench` over the reported datasets (a data
    directory's MANIFEST.json role `report`, else the profile's holdout) at --seeds seeds. Prints each
    stage's seconds and the benchmark's table; one `bench-chain` run in `tans/bench` records them.

    On the shared datasets: `tans bench-chain --data-dir ../shared/datasets --work-dir bench-work --resume`.
    """
    from ..bench.chain import run_chain
    from ..bench.config import ChainConfig
    from ..bench.report import table

    rec = run_chain(ChainConfig(profile=profile, resume=resume, executor=executor, ray_address=ray_address,
                                device=device, plots=plots, work_dir=work_dir, data_dir=data_dir,
                                **given(seeds=seeds, epochs=epochs, workers=workers)))
    if as_json:
        click.echo(json.dumps(rec.to_dict(), default=float))
        return
    click.echo(table(rec.bench))
    click.echo("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in rec.stage_seconds.items())
               + f"; total {rec.total_seconds / 60:.1f} min")
