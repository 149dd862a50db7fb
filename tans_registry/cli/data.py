"""`tans data list|show`."""
from __future__ import annotations

import json

import click

from .options import as_json_option, data_options


@click.group()
def data() -> None:
    """Inspect the datasets of the data directory."""


@data.command("list")
@data_options
@as_json_option
def data_list(data_dir, as_json):
    """List the datasets (.npz archives) of the data directory."""
    from ..data import list_datasets

    rows = list_datasets(data_dir)
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    click.echo(f"{'dataset':<24}{'classes':>8}{'train':>8}{'test':>7}  licence")
    for r in rows:
        click.echo(f"{r['name']:<24}{r['n_classes']:>8}{r['n_train']:>8}{r['n_test']:>7}  {r.get('license', '')}")


@data.command("show")
@data_options
@click.argument("dataset")
@as_json_option
def data_show(data_dir, dataset, as_json):
    """Load DATASET (a name, a .npz archive or an image folder) and describe it."""
    from ..data import describe_dataset

    info = describe_dataset(dataset, data_dir=data_dir)
    if as_json:
        click.echo(json.dumps(info))
        return
    for k, v in info.items():
        if k == "classes" and len(v) > 20:
            v = ", ".join(v[:20]) + f", ... ({len(v)} in all)"
        click.echo(f"{k:>20}: {v}")
