"""`tans index build`."""
from __future__ import annotations

import json

import click

from .options import as_json_option, store_options


@click.group()
def index() -> None:
    """The cached index of the registered zoo (what every query searches)."""


@index.command("build")
@store_options
@click.option("--force", is_flag=True, help="Rebuild even when the cache matches the registry.")
@as_json_option
def index_build(work_dir, force, as_json):
    """Embed the zoo with the champion encoders, then cache the registered versions as arrays.

    With `tans-encoders@champion` registered, every current zoo version's `tans.model_embedding` and
    `tans.dataset_embedding` tags are rewritten with learned embeddings (`tans.encoder_version`
    names the encoder version); before that, they hold the raw descriptors. Superseded versions (of a
    rebuilt group's earlier builds) are left out.

    The cache is keyed by the registry's state and the encoder version; a query reuses it while
    both are unchanged and rebuilds it otherwise.
    """
    from ..retrieval.config import IndexConfig
    from ..retrieval.indexing import build_index

    rec = build_index(IndexConfig(work_dir=work_dir, force=force))
    if as_json:
        click.echo(json.dumps(rec.to_dict()))
        return
    click.echo(f"index {rec.cache}: {rec.versions} versions of {rec.models} zoo models in "
               f"{rec.seconds * 1000:.0f} ms, encoders {rec.encoder_version} -> {rec.path}")
