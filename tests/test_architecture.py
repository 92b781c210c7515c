"""The shape of the code, as ARCHITECTURE.md draws it: layers whose imports point one way, small functions, and
code that speaks of the project alone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Bottom to top, folder by folder (ARCHITECTURE.md draws the same): storage/ -> text/ -> models/ -> convert/ ->
# loading/ -> runtime/ -> the encoder's users (parity, engines, data/, job/) -> cli/. A module imports only modules
# of lower layers (at any place in the file: a function-level import follows the same rule), so no import can form
# a cycle, and no folder reaches up into a later one.
LAYERS: list[list[str]] = [
    ["berta_jax.errors", "berta_jax.version", "berta_jax.tolerances"],
    ["berta_jax.storage.json_fields", "berta_jax.storage.file_info"],
    ["berta_jax.storage.local", "berta_jax.storage.remote"],
    ["berta_jax.storage.stores"],
    ["berta_jax.storage.model_files"],
    ["berta_jax.text.texts", "berta_jax.text.wordpiece"],
    ["berta_jax.text.tokenize"],
    ["berta_jax.models.vectors", "berta_jax.models.bert.config", "berta_jax.models.bert.names",
     "berta_jax.models.fused_attention"],
    ["berta_jax.models.attention", "berta_jax.models.bert.numerics"],
    ["berta_jax.models.bert.model", "berta_jax.models.registry"],
    ["berta_jax.models.bert.params", "berta_jax.models.pooling"],
    ["berta_jax.convert.safetensors_io"],
    ["berta_jax.convert.checkpoint"],
    ["berta_jax.convert.folders"],
    ["berta_jax.loading.hub", "berta_jax.loading.sentence_config", "berta_jax.loading.weights"],
    ["berta_jax.loading.folder"],
    ["berta_jax.runtime.compile_cache", "berta_jax.runtime.dtypes", "berta_jax.runtime.batching",
     "berta_jax.runtime.stats", "berta_jax.runtime.budget", "berta_jax.runtime.input_checks"],
    ["berta_jax.runtime.packing", "berta_jax.runtime.programs"],
    ["berta_jax.runtime.compiled"],
    ["berta_jax.runtime.encoder_base"],
    ["berta_jax.runtime.encoder"],
    ["berta_jax.train.base"],
    ["berta_jax.train.ranking", "berta_jax.train.distill", "berta_jax.train.scored"],
    ["berta_jax.train.matryoshka"],
    ["berta_jax.train.losses"],
    ["berta_jax.data.files", "berta_jax.data.rows"],
    ["berta_jax.data.parquet_rows"],
    ["berta_jax.parity", "berta_jax.engine", "berta_jax.data.outputs", "berta_jax.data.inputs"],
    ["berta_jax.data.splits", "berta_jax.beam.handler", "berta_jax.ray", "berta_jax.job.layout", "berta_jax.job.lock",
     "berta_jax.job.cluster", "berta_jax.job.parts", "berta_jax.job.summary",
     "berta_jax.job.fingerprint"],
    ["berta_jax.job.split_size"],
    ["berta_jax.job.plan", "berta_jax.beam.pipeline"],
    ["berta_jax.job.finish", "berta_jax.job.embed", "berta_jax.job.work", "berta_jax.beam"],
    ["berta_jax.job.settle"],
    ["berta_jax.job.run"],
    ["berta_jax.evaluate.records", "berta_jax.evaluate.base", "berta_jax.evaluate.ir_metrics",
     "berta_jax.evaluate.topk"],
    ["berta_jax.evaluate.beir", "berta_jax.evaluate.sts", "berta_jax.evaluate.labelled"],
    ["berta_jax.evaluate.retrieval"],
    ["berta_jax.evaluate.builder"],
    ["berta_jax.evaluate"],
    ["berta_jax.train.config", "berta_jax.train.plan", "berta_jax.train.optim", "berta_jax.train.progress",
     "berta_jax.train.checkpoint", "berta_jax.train.step", "berta_jax.train.data", "berta_jax.train.teacher",
     "berta_jax.train.export", "berta_jax.train.batches", "berta_jax.train.metrics",
     "berta_jax.train.students"],
    ["berta_jax.train.run_folder", "berta_jax.train.setup", "berta_jax.train.pipeline",
     "berta_jax.train.evaluation"],
    ["berta_jax.train.loop"],
    ["berta_jax.train.trainer"],
    ["berta_jax.cli.signals", "berta_jax.cli.commands", "berta_jax.cli.option_types"],
    ["berta_jax.cli.encode_args", "berta_jax.cli.progress", "berta_jax.cli.parity_command",
     "berta_jax.cli.train_command"],
    ["berta_jax.cli.encode", "berta_jax.cli.engines", "berta_jax.cli.evaluate_command"],
    ["berta_jax.cli.main"],
    ["berta_jax.cli", "berta_jax.cli.__main__", "berta_jax.__main__", "berta_jax", "berta_jax.convert", "berta_jax.job",
     "berta_jax.data", "berta_jax.storage", "berta_jax.text", "berta_jax.models", "berta_jax.models.bert",
     "berta_jax.loading", "berta_jax.runtime", "berta_jax.train"],
]
LAYER = {module: i for i, names in enumerate(LAYERS) for module in names}
MAX_FUNCTION_LINES = 50
MAX_MODULE_LINES = 300
MAX_LINE = 100  # pyproject's ruff line-length: the two size rules above are counted at this width


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


def _packages() -> list[str]:
    text = (REPO / "pyproject.toml").read_text()
    listed = re.search(r"^packages = \[(.*?)\]", text, re.M | re.S).group(1)
    return [p.strip().strip('"') for p in listed.split(",") if p.strip()]


def test_no_line_of_the_library_is_wider_than_a_hundred_columns():
    wide = [f"{module}:{i}" for module, path in _modules().items()
            for i, line in enumerate(path.read_text().splitlines(), 1) if len(line) > MAX_LINE]
    assert not wide, wide


def test_no_module_of_the_library_is_longer_than_three_hundred_lines():
    long = {module: n for module, path in _modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_the_distribution_claims_no_bare_top_level_name():
    assert all(p.startswith("berta_jax") for p in _packages())


def test_every_package_folder_is_in_the_distribution():
    """A folder left out of pyproject's list would be missing from a wheel (an editable install hides that)."""
    folders = {".".join(path.parent.relative_to(REPO).parts) for path in (REPO / "berta_jax").rglob("__init__.py")}
    assert sorted(folders | {"berta_jax.convert"}) == sorted(_packages())


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
