#!/usr/bin/env python3
"""Write docs/cli.md, the command reference, from the CLI's own `--help` texts (so it cannot drift:
tests/test_docs.py checks the file is what this script writes).

    .venv/bin/python scripts/cli_reference.py            # rewrite docs/cli.md
    .venv/bin/python scripts/cli_reference.py --check    # exit 1 if docs/cli.md is stale
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "cli.md"
WIDTH = 100


def _walk(cmd: click.Command, ctx: click.Context, path: list[str]):
    yield path, cmd, ctx
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.list_commands(ctx)):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            sub_ctx = click.Context(sub, info_name=name, parent=ctx, terminal_width=WIDTH, max_content_width=WIDTH)
            yield from _walk(sub, sub_ctx, path + [name])


def render() -> str:
    sys.path.insert(0, str(ROOT))
    from tans_registry.cli import main

    root_ctx = click.Context(main, info_name="tans", terminal_width=WIDTH, max_content_width=WIDTH)
    parts = ["# Command reference", "",
             "Generated from the CLI's `--help` by `scripts/cli_reference.py` (tests/test_docs.py fails when it is "
             "stale). Every command takes `-h`/`--help`.", ""]
    entries = list(_walk(main, root_ctx, ["tans"]))
    parts += [f"- [`{' '.join(p)}`](#{'-'.join(p)})" for p, _, _ in entries] + [""]
    for path, cmd, ctx in entries:
        parts += [f'<a id="{"-".join(path)}"></a>', f"## `{' '.join(path)}`", "", "```text",
                  cmd.get_help(ctx).rstrip(), "```", ""]
    return "\n".join(parts)


def main_(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/cli.md differs from the CLI's help")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is stale: run `python scripts/cli_reference.py`", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text):,} characters)")
    return 0


if __name__ == "__main__":
    sys.exit(main_())
