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
    """List the datasets (.npz archives) of the data directory, with each one's role (train or report) where
    the directory has a MANIFEST.json: report datasets are never trained on; `tans bench` reports on them."""
    from ..data import dataset_roles, list_datasets, resolve_data_dir

    rows = list_datasets(data_dir)
    roles = dataset_roles(resolve_data_dir(data_dir))
    if roles is not None:
        rows = [r | {"role": roles.get(r["name"])} for r in rows]
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    role = roles is not None
    click.echo(f"{'dataset':<28}{'classes':>8}{'train':>8}{'test':>7}" + (f"  {'role':<7}" if role else "")
               + "  licence")
    for r in rows:
        click.echo(f"{r['name']:<28}{r['n_classes']:>8}{r['n_train']:>8}{r['n_test']:>7}"
                   + (f"  {r['role'] or '-':<7}" if role else "") + f"  {r.get('license', '')}")


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
