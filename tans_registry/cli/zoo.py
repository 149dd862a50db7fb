"""`tans zoo build|register|list`."""
from __future__ import annotations

import json

import click

from ..zoo.config import ZooConfig
from ..zoo.profiles import PROFILES
from .options import (INT, OrDefault, as_json_option, common_options, default, device_option, executor_options, given, split,
                      store_options)


@click.group()
def zoo() -> None:
    """Build, register and browse the model zoo."""


@zoo.command("build")
@common_options
@click.option("--profile", type=OrDefault(click.Choice(list(PROFILES))), default=default(ZooConfig, "profile"),
              show_default=True,
              help="quick: 4 demo datasets x 10 networks, minutes on 2 cores. bench: every dataset of "
                   "the data directory, 60 groups x 50 networks, hours.")
@click.option("--datasets", default=None,
              help="Comma-separated dataset names, replacing the profile's list; a dataset of role `report` in "
                   "the data directory's MANIFEST.json is refused (it is never trained on).")
@click.option("--subnets", type=OrDefault(INT), default=None,
              help="Networks cut out of each group's supernet [default: the profile's].")
@click.option("--groups", type=OrDefault(INT), default=None,
              help="Meta-training groups (class-subset tasks spread over the datasets) [default: the profile's].")
@click.option("--epochs", type=OrDefault(float), default=None, help="Training epochs per group [default: the profile's].")
@click.option("--base-epochs", type=OrDefault(float), default=None,
              help="Epochs of the shared base supernet on the pooled datasets; 0 trains each group from scratch "
                   "[default: the profile's].")
@click.option("--workers", type=OrDefault(INT), default=None,
              help="Local: groups built at once, each in its own process with its share of the CPU threads "
                   "[default: 1]; 2 on a 2-core machine builds ~1.4x faster than 1 (small networks use 2 threads "
                   "poorly). Ray: at most this many group tasks in flight [default: as the cluster's CPUs allow].")
@executor_options
@device_option
@click.option("--resume", is_flag=True, help="Skip groups already built with the same settings.")
@click.option("--only-groups", default=None,
              help="Comma-separated group names (e.g. gtsrb-t1,gtsrb-t2): build just these groups of the "
                   "build (the base supernet too, if it is missing); with --resume the rest follow later.")
@click.option("--holdout", type=OrDefault(click.STRING), default=None,
              help="Comma-separated datasets of the data directory kept out of the whole build (base supernet "
                   "included): the reported datasets `tans bench` measures on; `none` holds none out "
                   "[default: the profile's; bench: orl_faces,pacs_art,notmnist,pneumoniamnist; quick: none]. Where "
                   "the data directory has a MANIFEST.json, its role `report` datasets are always held out and "
                   "replace the profile's list (`tans data list` shows the roles): --holdout can add names, never "
                   "drop one, and `--holdout none` still holds them out.")
@click.option("--seed", type=OrDefault(INT), default=default(ZooConfig, "seed"), show_default=True)
@as_json_option
def zoo_build(work_dir, data_dir, profile, datasets, subnets, groups, epochs, base_epochs, workers, executor,
              ray_address, device, resume, only_groups, holdout, seed, as_json):
    """Train one OFA supernet per group, cut out subnets, measure them, record them in MLflow.

    Each group is a run of the experiment `tans/zoo`. A killed build loses at most the group in
    progress: run again with --resume.
    """
    from ..zoo.build import build_zoo

    rec = build_zoo(ZooConfig(**given(profile=profile, subnets=subnets, groups=groups, epochs=epochs,
                                      base_epochs=base_epochs, workers=workers, seed=seed),
                              datasets=split(datasets), only_groups=split(only_groups), resume=resume,
                              holdout=None if holdout is None else
                              (() if holdout.strip().lower() == "none" else split(holdout) or ()),
                              data_dir=data_dir, work_dir=work_dir, executor=executor, ray_address=ray_address,
                              device=device))
    if as_json:
        click.echo(json.dumps(rec.to_dict()))
        return
    click.echo(f"zoo: {rec.n_networks} networks in {len(rec.groups)} groups -> {rec.tracking_uri}"
               f" (held out: {', '.join(rec.holdout) or 'none'})")
    click.echo(f"{'group':<28}{'status':>8}{'nets':>6}{'best acc':>10}{'min acc':>9}{'logreg':>8}{'sec':>7}")
    for g in rec.groups:
        lr = f"{g.logreg_accuracy:.3f}" if g.logreg_accuracy is not None else "-"
        click.echo(f"{g.group:<28}{g.status:>8}{g.n_networks:>6}{g.best_accuracy:>10.3f}"
                   f"{g.min_accuracy:>9.3f}{lr:>8}{g.seconds:>7.0f}")


@zoo.command("register")
@store_options
@as_json_option
def zoo_register(work_dir, as_json):
    """Register every zoo network in the MLflow Model Registry (idempotent).

    One registered model per group (`zoo.<group>`), one version per network, tagged `tans.*`
    (dataset, embeddings, accuracy, n_params, flops, arch, ...), loadable with
    `mlflow.pyfunc.load_model("models:/zoo.<group>/<version>")`. A second run registers nothing. The
    versions of a rebuilt group's earlier builds stay, tagged `tans.superseded_by`, out of the index.
    """
    from ..registry.config import RegisterConfig
    from ..registry.register import register_zoo

    rec = register_zoo(RegisterConfig(work_dir=work_dir))
    if as_json:
        click.echo(json.dumps(rec.to_dict()))
        return
    click.echo(f"registered {rec.created} new versions ({rec.existing} already there; {rec.superseded} of earlier "
               f"builds marked superseded) -> {rec.tracking_uri}")
    for name, n in rec.models.items():
        click.echo(f"  {name}: +{n}")


@zoo.command("list")
@store_options
@click.option("--dataset", default=None, help="Only networks of this dataset or group.")
@click.option("--max-params", type=INT, default=None, help="Only networks with at most N parameters.")
@as_json_option
def zoo_list(work_dir, dataset, max_params, as_json):
    """List the networks of the zoo (the latest complete build of each group)."""
    from ..zoo.config import ZooListConfig
    from ..zoo.store import list_zoo

    nets = list_zoo(ZooListConfig(dataset=dataset, max_params=max_params, work_dir=work_dir))
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
