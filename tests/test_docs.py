"""The docs cannot drift from the code: docs/cli.md is exactly what the CLI's `--help` texts render to."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_command_reference_is_the_clis_current_help():
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "cli_reference.py"), "--check"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr


def test_the_command_reference_covers_every_command():
    import click

    from tans_registry.cli import main

    text = (ROOT / "docs" / "cli.md").read_text()
    ctx = click.Context(main, info_name="tans")
    for name in main.list_commands(ctx):
        cmd = main.get_command(ctx, name)
        assert f"## `tans {name}`" in text, name
        if isinstance(cmd, click.Group):
            for sub in cmd.list_commands(ctx):
                assert f"## `tans {name} {sub}`" in text, (name, sub)
