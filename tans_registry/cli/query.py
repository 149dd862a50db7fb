"""`tans query`."""
from __future__ import annotations

import json

import click

from ..retrieval.config import RERANK, QueryConfig
from .options import INT, LIMIT, OrDefault, as_json_option, common_options, default, given


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
@click.option("--exclude-dataset", "exclude", multiple=True,
              help="Leave this source dataset's networks out (repeatable; e.g. the query's own, to benchmark).")
@click.option("--rerank", type=OrDefault(click.Choice(RERANK)), default=default(QueryConfig, "rerank"), show_default=True,
              help="Re-rank the retrieved shortlist by the predicted accuracy, or keep the retrieval order.")
@click.option("--shortlist", type=OrDefault(INT), default=None,
              help="Networks retrieved for re-ranking [default: the value the champion encoders were validated with].")
@click.option("--rerank-groups", type=OrDefault(INT), default=None,
              help="Re-rank only the shortlisted networks of the first N groups in retrieval order (0: the whole "
                   "shortlist) [default: the value the champion encoders were validated with].")
@click.option("--k-per-class", type=OrDefault(INT), default=None,
              help="Images per class embedded [default: as many as the champion encoders were trained with].")
@click.option("--seed", type=OrDefault(INT), default=default(QueryConfig, "seed"), show_default=True,
              help="Seed of the image sample (and of a folder's split).")
@as_json_option
def query(work_dir, data_dir, data, top_k, max_params, max_flops, exclude, rerank, shortlist, rerank_groups,
          k_per_class, seed, as_json):
    """Rank the zoo's networks as starting points for DATA.

    DATA is a dataset name from the data directory, a .npz archive in the shared format, or a folder
    with one sub-folder of images per class (optionally under train/ and test/). The dataset is
    embedded with `tans-encoders@champion`, the zoo index is searched under the constraints, and the
    accuracy predictor re-ranks the shortlist. The query is recorded as a run in `tans/queries`
    (fingerprint, constraints, ranked candidates). Needs `tans encoders train` and `tans index build`.
    """
    from ..retrieval.search import query as run_query

    rec = run_query(QueryConfig(data=data, max_params=max_params, max_flops=max_flops, exclude_datasets=tuple(exclude),
                                shortlist=shortlist, rerank_groups=rerank_groups, k_per_class=k_per_class,
                                work_dir=work_dir, data_dir=data_dir, **given(top_k=top_k, rerank=rerank, seed=seed)))
    if as_json:
        click.echo(json.dumps(rec.to_dict()))
        return
    d = rec.dataset
    click.echo(f"{d['name']}: {d['classes']} classes, {d['train_images']} training images; "
               f"{rec.zoo_networks} zoo networks, encoders v{rec.encoder_version}, re-rank: {rec.rerank}")
    click.echo(f"{'rank':>4}  {'model':<32}{'ver':>5}  {'source dataset':<22}{'source acc':>11}{'predicted':>10}"
               f"{'params':>11}{'MFLOPs':>8}")
    for c in rec.candidates:
        pred = f"{c.predicted_accuracy:>10.3f}" if c.predicted_accuracy is not None else f"{'-':>10}"
        click.echo(f"{c.rank:>4}  {c.model:<32}{c.version:>5}  {c.group:<22}{c.accuracy:>11.3f}{pred}"
                   f"{c.n_params:>11,}{c.flops / 1e6:>8.1f}")
    click.echo(f"query run {rec.run_id or '-'} (experiment tans/queries)")
