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


DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "cli.md")]


def _tans_commands(text: str) -> list[list[str]]:
    """The `tans ...` invocations of a markdown text's bash blocks, as argument lists (continuations joined,
    pipelines and `&&` chains split, comments dropped)."""
    import re
    import shlex

    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" #")[0] if not line.lstrip().startswith("#") else ""
            for part in re.split(r"&&|\|\||[|;]", line):
                words = shlex.split(part)
                if words and (words[0] == "tans" or words[0].endswith("/tans")):
                    out.append(words[1:])
    return out


def test_every_tans_command_in_the_readme_and_docs_exists_with_the_options_it_uses():
    """Each `tans ...` line of README.md's and docs/'s bash blocks names a real command, and every option it
    passes is one that command takes (what `--help` would list): commands in the docs cannot drift."""
    import click

    from tans_registry.cli import main

    seen = 0
    for path in DOCS:
        for args in _tans_commands(path.read_text()):
            cmd, ctx, words = main, click.Context(main, info_name="tans"), list(args)
            while isinstance(cmd, click.Group) and words and not words[0].startswith("-"):
                sub = cmd.get_command(ctx, words[0])
                assert sub is not None, f"{path.name}: `tans {' '.join(args)}`: no command {words[0]!r}"
                cmd, words = sub, words[1:]
                ctx = click.Context(cmd, info_name=cmd.name, parent=ctx)
            assert not isinstance(cmd, click.Group), f"{path.name}: `tans {' '.join(args)}` names a group only"
            known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
            for w in words:
                if w.startswith("--"):
                    assert w.split("=")[0] in known, f"{path.name}: `tans {' '.join(args)}`: {cmd.name} has no {w}"
            seen += 1
    assert seen >= 10  # the README and docs do show commands


def test_readme_stays_short_and_links_only_to_files_that_exist():
    import re

    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 15 * 1024
    assert len((ROOT / "BENCHMARKS.md").read_bytes()) <= 25 * 1024
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)", path.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"


def test_every_script_in_the_readme_and_docs_answers_help_with_the_options_it_uses():
    """Each `python scripts/X.py ...` line of the README's and docs' bash blocks: the script exists, answers
    `--help` (exit 0) and lists every option the line passes."""
    import re
    import shlex

    calls = []
    for path in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                for part in re.split(r"&&|\|\||[|;]", line.split(" #")[0]):
                    words = shlex.split(part)
                    if len(words) > 1 and words[0].endswith("python") and words[1].startswith("scripts/"):
                        calls.append((path.name, words[1], [w.split("=")[0] for w in words[2:] if w.startswith("--")]))
    assert calls
    helps: dict[str, str] = {}
    for doc, script, options in calls:
        if script not in helps:
            res = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                                 timeout=120, cwd=ROOT)
            assert res.returncode == 0, f"{doc}: {script} --help: {res.stderr[-500:]}"
            helps[script] = res.stdout
        for opt in options:
            assert opt in helps[script], f"{doc}: {script} has no {opt}"
