"""`tans zoo build|register|list|transfer|add`."""
from __future__ import annotations

import json

import click

from ..transfer.config import TransferConfig
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
              help="quick: 4 demo datasets x 10 networks from a small base supernet (2 epochs), whose own 10 "
                   "subnets are the generalist group; minutes on 2 cores. bench: every training dataset of the data "
                   "directory, 34 groups x 6 networks and the generalist's 6 from a 5-epoch base; about an hour.")
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
                   "build (the base supernet too, if it is missing; `__generalist__` names the base supernet's own "
                   "group); with --resume the rest follow later.")
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

    Each group is a run of the experiment `tans/zoo`. With a base supernet (--base-epochs > 0), its own
    subnets form one more group, `__generalist__` (dataset `__pooled__`): measured on the pooled test
    images and registered like any group, so every ranking can return them. A killed build loses at
    most the group in progress: run again with --resume.
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
    extra = " and the generalist" if rec.generalist else ""
    click.echo(f"zoo: {rec.n_networks} networks in {len(rec.groups)} groups{extra} -> {rec.tracking_uri}"
               f" (held out: {', '.join(rec.holdout) or 'none'})")
    click.echo(f"{'group':<28}{'status':>8}{'nets':>6}{'best acc':>10}{'min acc':>9}{'logreg':>8}{'sec':>7}")
    for g in rec.groups + ((rec.generalist,) if rec.generalist else ()):
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


@zoo.command("transfer")
@common_options
@click.option("--starts", type=OrDefault(INT), default=default(TransferConfig, "starts"), show_default=True,
              help="Networks fine-tuned per task: one of the generalist's (where the zoo has it), the rest from the "
                   "other datasets' groups, one group after another in a seeded order.")
@click.option("--datasets", default=None,
              help="Comma-separated training datasets of the zoo to take as tasks [default: all of them].")
@click.option("--epochs", type=OrDefault(float), default=default(TransferConfig, "epochs"), show_default=True,
              help="The full budget; the one-epoch budget is run too (the benchmark's two budgets).")
@click.option("--max-train", type=OrDefault(INT), default=default(TransferConfig, "max_train"), show_default=True,
              help="Training images per task (stratified; a fifth carved out for validation), as the benchmark.")
@click.option("--max-test", type=OrDefault(INT), default=default(TransferConfig, "max_test"), show_default=True,
              help="Test images per task (stratified).")
@click.option("--workers", type=OrDefault(INT), default=None,
              help="Starts fine-tuned at once, each in its own process [default: one per core; Ray: a task's "
                   "starts at once, as the cluster's CPUs allow].")
@executor_options
@device_option
@click.option("--resume", is_flag=True, help="Keep the records already written for the same task, start and settings.")
@click.option("--seed", type=OrDefault(INT), default=default(TransferConfig, "seed"), show_default=True,
              help="Seed of each task's sample, its validation split, the heads and the choice of starts.")
@as_json_option
def zoo_transfer(work_dir, data_dir, starts, datasets, epochs, max_train, max_test, workers, executor, ray_address,
                 device, resume, seed, as_json):
    """Fine-tune zoo networks on the zoo's other datasets and keep every result (the transfer table).

    Each training dataset of the zoo is a task, loaded as `tans bench` loads a query; networks of the other
    datasets' groups and of the generalist (never the task's own dataset's groups) are prepared, probed and
    fine-tuned at the benchmark's two budgets. Each (task, start, budget) is a run of the experiment
    `tans/transfer` (tags `tans.task*`, `tans.start*`, `tans.budget`; its validation accuracy by epoch as a
    metric): what `tans encoders train` learns fine-tuned accuracy from. A killed run loses only the starts
    in flight: run again with --resume.
    """
    from ..transfer.stage import build_table

    rec = build_table(TransferConfig(**given(starts=starts, epochs=epochs, max_train=max_train, max_test=max_test,
                                             workers=workers, seed=seed),
                                     datasets=split(datasets), resume=resume, device=device, executor=executor,
                                     ray_address=ray_address, work_dir=work_dir,
                                     data_dir=data_dir))
    if as_json:
        click.echo(json.dumps(rec.to_dict()))
        return
    click.echo(f"transfer table: {rec.records} records of {len(rec.tasks)} tasks ({rec.written} written, {rec.kept} "
               f"kept) in {rec.seconds / 60:.1f} min -> experiment tans/transfer ({rec.experiment_id})")


@zoo.command("add")
@store_options
@click.argument("model_uri")
@as_json_option
def zoo_add(work_dir, model_uri, as_json):
    """Add a fine-tuned winner to the zoo as a standalone candidate, so that later, similar queries can find it.

    MODEL_URI is a version `tans query --finetune N` registered: models:/tans-finetuned.<dataset>/<version> or
    models:/tans-finetuned.<dataset>@champion. It is checked against its recorded sha256, measured as every zoo
    network is, and registered as a version of zoo.added.<dataset> (its own weights; tag tans.added_from).
    Run `tans index build` to search it. Adding the same version again changes nothing.
    """
    from ..transfer.add import add_to_zoo
    from ..transfer.config import AddConfig

    rec = add_to_zoo(AddConfig(model_uri=model_uri, work_dir=work_dir))
    if as_json:
        click.echo(json.dumps(rec.to_dict()))
        return
    if not rec.created:
        click.echo(f"{rec.added_from} is in the zoo already: {rec.model_uri}")
        return
    click.echo(f"added {rec.added_from} to the zoo as {rec.model_uri} (test accuracy {rec.accuracy:.3f} on "
               f"{rec.dataset}, {rec.n_params:,} parameters); run `tans index build` to search it")
