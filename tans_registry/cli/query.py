"""`tans query`."""
from __future__ import annotations

import json

import click

from ..finetune.config import FinetuneSettings, QueryConfig
from ..retrieval.config import HYBRID_K, HYBRID_MIN_GROUPS, HYBRID_SCORE, RERANK
from .options import (FLOAT_LIMIT, INT, LIMIT, OrDefault, as_json_option, common_options, default, device_option, executor_options,
                      from_command_line, given)


@click.command("query")
@common_options
@click.argument("data")
@click.option("--top-k", type=OrDefault(INT), default=default(QueryConfig, "top_k"), show_default=True,
              help="Candidates to return.")
@click.option("--max-params", type=LIMIT, default=None,
              help="Only networks with at most N parameters ('none': no limit, the default).")
@click.option("--max-flops", type=LIMIT, default=None,
              help="Only networks with at most N FLOPs (torch's counter: 2 per multiply-add, at the zoo's "
                   "32x32 input; 'none': no limit, the default).")
@click.option("--max-latency-ms", type=FLOAT_LIMIT, default=None,
              help="Only networks whose ONNX Runtime latency (batch 1, this machine's CPU provider, measured by "
                   "`tans index build`) is at most X ms ('none': no limit, the default).")
@click.option("--exclude-dataset", "exclude", multiple=True,
              help="Leave this source dataset's networks out (repeatable; e.g. the query's own, to benchmark).")
@click.option("--rerank", type=OrDefault(click.Choice(RERANK)), default=default(QueryConfig, "rerank"),
              show_default=True,
              help="Re-rank the shortlist by the predicted accuracy, by LogME (forward passes of the re-ranked "
                   "networks over the dataset's images), or keep the retrieval order. hybrid: the predictor's first "
                   f"{HYBRID_K} networks over the whole zoo, spanning {HYBRID_MIN_GROUPS} groups or more and holding "
                   f"the generalist's best, re-ranked by {HYBRID_SCORE} (one forward pass of each). --shortlist and "
                   "--rerank-groups apply to predictor and logme only.")
@click.option("--shortlist", type=OrDefault(INT), default=None,
              help="Networks retrieved for re-ranking by predictor or logme [default: the value the champion encoders were validated with].")
@click.option("--rerank-groups", type=OrDefault(INT), default=None,
              help="Re-rank only the shortlisted networks of the first N groups in retrieval order (0: the whole "
                   "shortlist) [default: the value the champion encoders were validated with].")
@click.option("--k-per-class", type=OrDefault(INT), default=None,
              help="Images per class embedded [default: as many as the champion encoders were trained with].")
@click.option("--finetune", type=OrDefault(INT), default=default(QueryConfig, "finetune"), show_default=True,
              help="Fine-tune the top N candidates (0: rank only), register the winner as tans-finetuned.<dataset> "
                   "and export it to ONNX as tans-onnx.<dataset>.")
@click.option("--epochs", type=OrDefault(float), default=default(FinetuneSettings, "epochs"), show_default=True,
              help="Fine-tuning epochs per candidate (early stopping on a validation split may end it sooner).")
@click.option("--head-first/--no-head-first", default=default(FinetuneSettings, "head_first"), show_default=True,
              help="Fit each candidate's new head on its frozen features first (a logistic regression, the linear "
                   "probe), then fine-tune everything from there. Either way the probe itself is kept instead of "
                   "the fine-tuned network when it validates better (the output says which).")
@click.option("--finetune-workers", type=OrDefault(INT), default=None,
              help="Candidates fine-tuned at once, each in its own process [default: min(N, cores)].")
@executor_options
@device_option
@click.option("--export/--no-export", default=default(QueryConfig, "export"), show_default=True,
              help="Export the fine-tuned winner to verified ONNX and register it.")
@click.option("--seed", type=OrDefault(INT), default=default(QueryConfig, "seed"), show_default=True,
              help="Seed of the image sample, a folder's split, and the fine-tuning.")
@as_json_option
def query(work_dir, data_dir, data, top_k, max_params, max_flops, max_latency_ms, exclude, rerank, shortlist,
          rerank_groups, k_per_class, finetune, epochs, head_first, finetune_workers, executor, ray_address, device,
          export, seed, as_json):
    """Rank the zoo's networks as starting points for DATA; fine-tune the best; deploy the winner.

    DATA is a dataset name from the data directory, a .npz archive in the shared format, or a folder
    with one sub-folder of images per class (optionally under train/ and test/). The dataset is
    embedded with `tans-encoders@champion`, the zoo index is filtered by the constraints, searched and
    re-ranked; the top --finetune candidates are fine-tuned (validation split carved from the training
    images; the test split only reports), the winner by validation accuracy is registered with its
    lineage and exported to ONNX, checked against PyTorch. All of it is recorded on a run in
    `tans/queries`. Needs `tans encoders train` and `tans index build`.
    """
    from ..transfer.feedback import query as run_query  # the query, its fine-tunings appended to the transfer table

    if not from_command_line("finetune") and top_k is not None:
        finetune = min(finetune, top_k)  # the default fine-tunes at most what is ranked
    if finetune == 0:
        extra = [f"--{n.replace('_', '-')}" for n in ("epochs", "head_first", "finetune_workers", "executor",
                                                        "ray_address", "export") if from_command_line(n)]
        if extra:
            raise click.UsageError(f"{', '.join(extra)} apply to fine-tuning, and --finetune is 0: drop them, or "
                                   "fine-tune (--finetune N)")
    settings = FinetuneSettings(device=device, head_first=head_first,
                                **given(epochs=epochs, seed=seed, workers=finetune_workers))
    rec = run_query(QueryConfig(data=data, max_params=max_params, max_flops=max_flops, max_latency_ms=max_latency_ms,
                                exclude_datasets=tuple(exclude), shortlist=shortlist, rerank_groups=rerank_groups,
                                k_per_class=k_per_class, work_dir=work_dir, data_dir=data_dir, settings=settings,
                                export=export, executor=executor, ray_address=ray_address, device=device, **given(top_k=top_k, rerank=rerank, seed=seed, finetune=finetune)))
    out = rec.to_dict()
    if as_json:
        click.echo(json.dumps(out))
        return
    from ..zoo.generalist import GROUP as GENERALIST

    r = rec.ranking
    d = r.dataset
    click.echo(f"{d['name']}: {d['classes']} classes, {d['train_images']} training images; "
               f"{r.zoo_networks} zoo networks, encoders v{r.encoder_version}, re-rank: {r.rerank}")
    score = {"logme": "LogME", "hybrid": str(r.score_kind).upper() if r.score_kind != "logme" else "LogME",
             "none": "retrieval"}.get(
        r.rerank, "transfer" if r.score_kind == "transfer" else "predicted")
    click.echo(f"{'rank':>4}  {'model':<30}{'ver':>5}  {'source dataset':<22}{'source acc':>11}{score:>10}"
               f"{'params':>11}{'MFLOPs':>8}{'ms':>7}")
    for c in r.candidates:
        s = {"logme": c.logme, "hybrid": c.transfer_score, "none": c.score}.get(
            r.rerank, c.transfer_score if r.score_kind == "transfer" else c.predicted_accuracy)
        s = f"{s:>10.3f}" if s is not None else f"{'-':>10}"
        lat = f"{c.latency_ms:>7.2f}" if c.latency_ms is not None else f"{'-':>7}"
        src = "generalist (pooled)" if c.group == GENERALIST else c.group
        click.echo(f"{c.rank:>4}  {c.model:<30}{c.version:>5}  {src:<22}{c.accuracy:>11.3f}{s}"
                   f"{c.n_params:>11,}{c.flops / 1e6:>8.1f}{lat}")
    if rec.finetuned:
        click.echo(f"fine-tuned the top {len(rec.finetuned)} ({rec.timings.get('finetune', 0):.0f} s):")
        for f in rec.finetuned:
            kept = "; kept: the linear probe (validated better)" if f.kept == "probe" else ""
            click.echo(f"  #{f.rank} {f.parent}: validation {f.val_accuracy:.3f}, test {f.test_accuracy:.3f}, "
                       f"{f.epochs:g} epochs{' (stopped early)' if f.stopped_early else ''}{kept}")
        w = rec.winner
        click.echo(f"winner: {w['model_uri']} (from #{w['rank']}, validation {w['val_accuracy']:.3f}, test "
                   f"{w['test_accuracy']:.3f}){' -> champion' if w['champion'] else ' (champion unchanged)'}")
    if rec.onnx is not None:
        o = rec.onnx
        click.echo(f"onnx: {o.model_uri} ({o.path}); parity on {o.parity_images} images: max abs diff "
                   f"{o.max_abs_diff:.1e}, top-1 agreement {o.top1_agreement:.0%}")
    click.echo(f"query run {r.run_id or '-'} (experiment tans/queries)")
