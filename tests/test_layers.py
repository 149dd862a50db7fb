"""The package's shape, read from its source with `ast`: imports run one way down the layers, with no
cycle between modules, and only `registry/` talks to the MLflow Model Registry."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "tans_registry"
# The layers, lowest first (docs/architecture.md "Layout"). A module may import its own layer and the ones before it.
# The base modules (errors, params, tracking, device, executor) are below everything; the CLI and the package top above.
LAYERS = ["base", "data", "zoo", "registry", "encoders", "retrieval", "validation", "export", "finetune",
          "transfer", "training", "serve", "bench", "cli", "top"]
BASE = {"errors", "params", "tracking", "mlmodel", "device", "executor", "team"}
# Model Registry calls (MlflowClient and fluent): allowed only under registry/.
REGISTRY_CALLS = {
    "create_registered_model", "get_registered_model", "search_registered_models", "rename_registered_model",
    "update_registered_model", "delete_registered_model", "set_registered_model_tag",
    "delete_registered_model_tag", "set_registered_model_alias", "delete_registered_model_alias",
    "create_model_version", "get_model_version", "get_model_version_by_alias", "get_model_version_download_uri",
    "search_model_versions", "update_model_version", "delete_model_version", "set_model_version_tag",
    "delete_model_version_tag", "get_latest_versions", "transition_model_version_stage", "register_model",
    "copy_model_version",
}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["tans_registry", *parts])] = path
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "top"
    if parts[1] in BASE:
        return "base"
    return parts[1]


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every tans_registry module ``module`` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import sub` imports the submodule; `from mod import name`, the module
            names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]
        for name in names:
            # the longest known module the name resolves to (``from . import x`` may name a module)
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("tans_registry") and name != module:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph():
    mods = modules()
    known = set(mods)
    return {m: imports(m, p, known) for m, p in mods.items()}


def test_every_module_is_in_a_layer(graph):
    assert {layer(m) for m in graph} <= set(LAYERS), {layer(m) for m in graph} - set(LAYERS)


def test_imports_run_one_way_down_the_layers(graph):
    bad = []
    for mod, deps in graph.items():
        for dep in deps:
            if dep == "tans_registry":  # the package top (lazy exports) is above everything
                bad.append((mod, dep))
            elif LAYERS.index(layer(dep)) > LAYERS.index(layer(mod)):
                bad.append((mod, dep))
    assert not bad, "imports against the layer order:\n" + "\n".join(f"  {a} -> {b}" for a, b in sorted(bad))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (module -> imported modules) as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if state.get(d) is None and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check sees one


def test_only_the_registry_calls_the_model_registry():
    bad = []
    for mod, path in modules().items():
        if layer(mod) == "registry":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in REGISTRY_CALLS:
                bad.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.keyword) and node.arg == "registered_model_name":
                bad.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} registered_model_name=")
    assert not bad, "Model Registry calls outside registry/:\n" + "\n".join(bad)


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The scanner itself: a relative import up a layer, and a registry call, are seen."""
    pkg = tmp_path / "tans_registry" / "zoo"
    pkg.mkdir(parents=True)
    src = pkg / "x.py"
    src.write_text("from ..retrieval import search\n\ndef f(c):\n    from .. import tracking\n    "
                   "c.create_model_version('a', 'b')\n")
    found = imports("tans_registry.zoo.x", src, {"tans_registry", "tans_registry.retrieval",
                                                  "tans_registry.retrieval.search", "tans_registry.tracking"})
    assert found == {"tans_registry.retrieval.search", "tans_registry.tracking"}
    assert LAYERS.index(layer("tans_registry.retrieval.search")) > LAYERS.index(layer("tans_registry.zoo.x"))
    calls = [n.attr for n in ast.walk(ast.parse(src.read_text())) if isinstance(n, ast.Attribute)]
    assert "create_model_version" in calls and "create_model_version" in REGISTRY_CALLS


def test_stage_functions_are_importable_from_the_package_top():
    import tans_registry

    for name in ("build_zoo", "register_zoo", "train_encoders", "build_index", "query",
                 "ZooConfig", "RegisterConfig", "EncoderTrainConfig", "IndexConfig", "QueryConfig"):
        assert callable(getattr(tans_registry, name)), name
    with pytest.raises(AttributeError):
        tans_registry.no_such_thing  # noqa: B018


def test_modules_stay_small():
    big = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 420}
    assert not big, f"modules over ~400 lines (split them by concept): {big}"
