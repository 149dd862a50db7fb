"""The project's promises about itself: the README Quickstart and what CI runs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _quickstart():
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "scripts" / "quickstart.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.quickstart_commands((ROOT / "README.md").read_text())


def test_readme_quickstart_has_exactly_two_commands():
    setup, tests = _quickstart()
    assert "python3 -m venv .venv" in setup and "pip install" in setup and "tans zoo build" in setup
    assert "pytest" in tests


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/quickstart.py" in ci and "pg_ctlcluster" in ci


def test_demo_data_is_documented():
    readme = (ROOT / "tans_registry" / "demo_data" / "README.md").read_text()
    for npz in (ROOT / "tans_registry" / "demo_data").glob("*.npz"):
        assert npz.stem in readme
