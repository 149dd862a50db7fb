"""The project's promises about itself: the README Quickstart and what CI runs, the three doors (CLI,
MLproject, Python API) onto one store, and the README's Python example."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _quickstart():
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / "scripts" / "quickstart.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.quickstart_commands((ROOT / "README.md").read_text())


def test_readme_quickstart_has_exactly_two_commands():
    setup, tests = _quickstart()
    assert "python3 -m venv .venv" in setup and "pip install" in setup and "tans zoo build" in setup
    assert "pytest" in tests and '-m "not slow"' in tests  # .ci/run runs the slow ones after it


def test_ci_runs_the_readme_commands_then_the_slow_tests_and_nothing_else():
    """CI starts PostgreSQL when it is down, runs the README's two commands, then the slow tests the second
    leaves out (so every test runs); all other set-up (the browser included) is in the first command, so a
    new user's fresh machine gets it too."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/quickstart.py" in ci and "pg_ctlcluster" in ci
    assert ".venv/bin/python -m pytest -m slow" in ci
    assert "install_browser" not in ci and "apt-get" not in ci and "pip install" not in ci
    setup, _ = _quickstart()
    assert "scripts/install_browser.sh" in setup


def test_demo_data_is_documented():
    readme = (ROOT / "tans_registry" / "demo_data" / "README.md").read_text()
    for npz in (ROOT / "tans_registry" / "demo_data").glob("*.npz"):
        assert npz.stem in readme


def test_mlproject_entry_points_match_the_cli():
    import re
    import shlex

    import click
    import yaml

    from tans_registry.cli import main

    project = yaml.safe_load((ROOT / "MLproject").read_text())
    entry = project["entry_points"]
    assert {"main", "build_zoo", "register_zoo", "train_encoders", "build_index", "query", "bench_encoders",
            "benchmark", "bench_chain"} <= set(entry)
    for name, ep in entry.items():
        params = ep.get("parameters", {})
        for p, spec in params.items():
            assert isinstance(spec, dict) and spec.get("type") in ("string", "float", "path", "uri"), (name, p)
            assert "default" in spec or p == "model_uri", (name, p)  # model_uri: required
            assert "{" + p + "}" in ep["command"], (name, p)
        for part in ep["command"].split("&&"):
            words = shlex.split(part)
            assert words[0] == "mlproject/tans", part  # the launcher, which finds `tans` without PATH
            cmd, i = main, 1
            while i < len(words) and isinstance(cmd, click.Group) and not words[i].startswith("-"):
                cmd, i = cmd.commands[words[i]], i + 1
            options = {o for prm in cmd.params for o in prm.opts + prm.secondary_opts}
            for flag in re.findall(r"(--[a-z-]+)", part):
                assert flag in options, (name, flag)
            # the command line MLflow would run with the defaults parses (arguments, options, values)
            args = [re.sub(r"\{(\w+)\}", lambda mt: str(params[mt.group(1)].get("default", "models:/x/1")), w)
                    for w in words[i:]]
            ctx = cmd.make_context(cmd.name, args)
            assert ctx is not None, (name, args)


def _env_without_venv(**extra) -> dict:
    """The environment with no MLFLOW_*/TANS_* variables and no virtual environment on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TANS_", "VIRTUAL_ENV"))}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    return env | extra


def test_the_embedded_default_is_mlflows_own_store(tmp_path, monkeypatch, tiny_data_dir):
    """No variable set: `tans` writes ./mlflow.db beside ./mlruns, which a fresh MLflow process (what
    `mlflow ui` and `mlflow models serve` run) reads by default."""
    from tans_registry import RegisterConfig, ZooConfig, build_zoo, register_zoo, tracking

    monkeypatch.delenv("TANS_WORK_DIR")
    monkeypatch.chdir(tmp_path)
    build_zoo(ZooConfig(datasets=("cells",), subnets=2, epochs=1, base_epochs=0, data_dir=str(tiny_data_dir),
                        progress=False))
    register_zoo(RegisterConfig(progress=False))
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlruns" / "tans-zoo").is_dir()
    assert tracking.setup()[1] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    probe = ("import mlflow; c = mlflow.MlflowClient(); print(mlflow.get_tracking_uri()); "
             "print(sorted(e.name for e in c.search_experiments())); "
             "print(mlflow.pyfunc.load_model('models:/zoo.cells/1').predict(__import__('numpy').zeros((1, 32, 32, 3), "
             "'uint8'))['probabilities'].shape)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=_env_without_venv(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    uri, names, shape = out.stdout.strip().splitlines()[-3:]
    assert uri in ("sqlite:///mlflow.db", f"sqlite:///{tmp_path / 'mlflow.db'}")  # MLflow's default: the same file
    assert "tans/zoo" in names and shape == "(1, 3)"


@pytest.mark.slow
def test_an_entry_point_runs_through_mlflow_run_with_no_variable_and_no_venv_on_path(tmp_path, monkeypatch,
                                                                                     tiny_data_dir):
    """`mlflow run . -e register_zoo --env-manager local` from a project folder, with no MLFLOW_* or
    TANS_* variable and the environment's bin off PATH: the launcher finds `.venv/bin/tans`, and the
    stage registers into the store the zoo was built in, MLflow's default ./mlflow.db, where the project
    run is too."""
    import shutil

    import mlflow

    from tans_registry import ZooConfig, build_zoo, tracking

    project = tmp_path / "project"  # the project's MLflow files, and its environment where the README puts it
    project.mkdir()
    for name in ("MLproject", "conda.yaml"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "mlproject", project / "mlproject")
    (project / ".venv").symlink_to(Path(sys.executable).parent.parent)
    monkeypatch.chdir(project)
    monkeypatch.delenv("TANS_WORK_DIR")
    build_zoo(ZooConfig(datasets=("cells",), subnets=2, epochs=1, base_epochs=0, data_dir=str(tiny_data_dir),
                        progress=False))
    out = subprocess.run([str(Path(sys.executable).parent / "mlflow"), "run", ".", "-e", "register_zoo",
                          "--env-manager", "local"], cwd=project, env=_env_without_venv(), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "registered 2 new versions" in out.stdout + out.stderr
    tracking.setup(project)
    client = mlflow.MlflowClient()
    assert len(client.search_model_versions("name = 'zoo.cells'")) == 2
    runs = client.search_runs(["0"], "tags.`mlflow.project.entryPoint` = 'register_zoo'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert sorted(p.name for p in project.iterdir() if p.name.endswith(".db")) == ["mlflow.db"]  # one store


def test_the_launcher_says_what_to_do_without_tans(tmp_path):
    launcher = tmp_path / "mlproject" / "tans"
    launcher.parent.mkdir()
    shutil_copy = __import__("shutil").copy
    shutil_copy(ROOT / "mlproject" / "tans", launcher)
    out = subprocess.run(["bash", str(launcher), "--help"], env=_env_without_venv(), capture_output=True, text=True)
    assert out.returncode == 127 and "source .venv/bin/activate" in out.stderr and "TANS_BIN" in out.stderr


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's "Python API" example, run as written (in a fresh work directory)."""
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Python API\n(.*?)(?=^## )", readme, re.S | re.M)
    assert section, "README has no '## Python API' section"
    code = re.search(r"```python\n(.*?)```", section.group(1), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TANS_WORK_DIR")
    namespace: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)  # noqa: S102
    result = namespace["result"]
    assert result.ranking.candidates and result.winner["model_uri"].startswith("models:/tans-finetuned.chinese_mnist/")
    assert result.onnx.model_uri.startswith("models:/tans-onnx.chinese_mnist/") and result.onnx.max_abs_diff <= result.onnx.allowed_abs_diff <= 1e-2
