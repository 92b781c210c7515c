"""The shape of the code, as ARCHITECTURE.md draws it: layers whose imports point one way, small functions, and
code that speaks of the project alone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Bottom to top. A module imports only modules of lower layers (at any place in the file: a function-level import
# follows the same rule), so no import can form a cycle.
LAYERS: list[list[str]] = [
    ["berta_jax.errors", "berta_jax.version"],
    ["berta_jax.jsonfields", "berta_jax.vectors", "berta_jax.wordpiece", "berta_jax.compile_cache", "berta_jax.texts",
     "berta_jax.dtypes"],
    ["berta_jax.files", "berta_jax.storage"],
    ["berta_jax.config"],
    ["berta_jax.attention"],
    ["berta_jax.model"],
    ["berta_jax.params", "berta_jax.pooling", "berta_jax.convert.mapping", "berta_jax.convert.safetensors_io"],
    ["berta_jax.convert.checkpoint", "berta_jax.st_config", "berta_jax.hub", "berta_jax.tokenize"],
    ["berta_jax.convert.folders", "berta_jax.weights", "berta_jax.folder", "berta_jax.batching"],
    ["berta_jax.runtime", "berta_jax.packing"],
    ["berta_jax.encoder"],
    ["berta_jax.parity", "berta_jax.data.inputs", "berta_jax.engine", "berta_jax.data.outputs"],
    ["berta_jax.data.splits", "berta_jax.beam.handler", "berta_jax.ray", "berta_jax.job.layout", "berta_jax.job.lock",
     "berta_jax.job.cluster", "berta_jax.job.parts"],
    ["berta_jax.job.plan", "berta_jax.beam.pipeline"],
    ["berta_jax.job.finish", "berta_jax.beam"],
    ["berta_jax.job.settle"],
    ["berta_jax.job.run"],
    ["berta_jax.cli.signals", "berta_jax.cli.commands"],
    ["berta_jax.cli.encode", "berta_jax.cli.engines"],
    ["berta_jax.cli.main"],
    ["berta_jax.cli", "berta_jax.cli.__main__", "berta_jax.__main__", "berta_jax", "berta_jax.convert", "berta_jax.job",
     "berta_jax.data"],
]
LAYER = {module: i for i, names in enumerate(LAYERS) for module in names}
MAX_FUNCTION_LINES = 50


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((REPO / "berta_jax").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((REPO / "convert").rglob("*.py")):
        stem = path.relative_to(REPO / "convert").with_suffix("").parts
        found[".".join(["berta_jax.convert", *stem[:-1]] if stem[-1] == "__init__" else ["berta_jax.convert", *stem])] = path
    return found


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("berta_jax"):
            submodules = {f"{node.module}.{a.name}" for a in node.names} & set(LAYER)
            names.update(submodules or {node.module})  # `from pkg import module` depends on the module only
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("berta_jax"))
    return names


def test_every_module_has_a_layer():
    assert sorted(_modules()) == sorted(LAYER)


@pytest.mark.parametrize("module", sorted(LAYER))
def test_imports_point_down(module):
    path = _modules()[module]
    upward = sorted(name for name in _imports(path) if name in LAYER and LAYER[name] >= LAYER[module]
                    and not (module in ("berta_jax", "berta_jax.cli") and name.startswith(module + ".")))
    assert not upward, f"{module} (layer {LAYER[module]}) imports {upward} from its own layer or above"


def test_no_function_in_the_library_is_longer_than_fifty_lines():
    long = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, long


def test_the_distribution_claims_no_bare_top_level_name():
    text = (REPO / "pyproject.toml").read_text()
    packages = re.search(r"^packages = \[(.*?)\]", text, re.M).group(1)
    assert all(p.strip().strip('"').startswith("berta_jax") for p in packages.split(","))


def test_nothing_imports_at_module_import_time_what_it_does_not_need():
    """No global side effects at import: the library registers no listeners and changes no JAX settings."""
    for module, path in _modules().items():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
                call = ast.unparse(node.value)
                assert not call.startswith(("jax.", "jax.monitoring", "compilation_cache")), f"{module}: {call}"


def test_code_and_tests_speak_of_the_project_alone():
    pattern = re.compile(r"\b(issue|checklist item)s? #?\d+|shared/RELIABILITY|\.\./shared", re.I)
    offenders = []
    for folder in ("berta_jax", "convert", "tests", "benchmarks", "examples"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name != "test_architecture.py":
                offenders += [f"{path.relative_to(REPO)}: {m.group()}" for m in pattern.finditer(path.read_text())]
    assert not offenders, offenders
