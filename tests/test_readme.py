"""The README and docs/ keep their word: the Python snippets of the README and docs/training.md run as written
(on a folder with BERTA's files and prompts, random weights, in place of the hub id), every `berta-jax
SUBCOMMAND --flag` they show exists in the parser, every `make TARGET` in the Makefile, every relative link
resolves (anchors included), and every name a snippet imports from berta_jax is defined there."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from berta_jax.cli.main import build_parser
from tests.checkpoints import BERTA_PROMPTS, make_random_bert

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS, REPO / "ARCHITECTURE.md", REPO / "RELIABILITY.md", REPO / "benchmarks" / "NOTES.md"]


def python_snippets(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def test_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.split()) < 1000 and len(text.splitlines()) < 120  # five minutes to read
    first_screen = "\n".join(text.splitlines()[:30])
    assert "python3 -m venv" in first_screen and "make demo" in first_screen and "make test" in first_screen
    assert re.search(r"^## Training\n\n(.+\n){3,6}\n", text, re.M) and "docs/training.md" in text


@pytest.fixture(scope="module")
def berta_like_dir(tmp_path_factory):
    return make_random_bert(tmp_path_factory.mktemp("readme") / "model", seed=3, prompts=BERTA_PROMPTS,
                            default_prompt_name="categorize_entailment", hidden_size=256, num_attention_heads=4,
                            num_hidden_layers=1, intermediate_size=64, max_position_embeddings=64, vocab_size=2000)


def test_the_readme_and_training_snippets_run_as_written(berta_like_dir, tmp_path, monkeypatch):
    # the training API's snippet runs a whole training (its names are checked below, with every page's)
    training = [code for code in python_snippets(REPO / "docs" / "training.md") if "TrainConfig" not in code]
    snippets = python_snippets(README) + training
    assert len(snippets) == 2 and '"sergeyzh/BERTA"' in snippets[0] and len(snippets[0].splitlines()) == 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for code in snippets:
        exec(compile(code.replace('"sergeyzh/BERTA"', repr(str(berta_like_dir))), str(README), "exec"), namespace)
    assert namespace["emb"].shape == (1, 256) and namespace["res"].embeddings.shape == (1, 256)
    assert not np.allclose(namespace["q"], namespace["d"])  # different prompts, different texts
    assert (tmp_path / "out" / "model.safetensors").is_file()


def _commands(text: str) -> list[str]:
    """Every `berta-jax ...` command of a page's code: the lines of fenced blocks that start with it
    (continuations joined, comments dropped) and inline code that starts with it."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    lines = [line.split(" #")[0] for b in blocks for line in re.sub(r"\\\n\s*", " ", b).splitlines()]
    commands = [line.strip() for line in lines + inline if line.strip().startswith("berta-jax ")]
    return [re.split(r"\s\[?--\s", line)[0] for line in commands]  # after `--`: Beam's own options


def _parser_flags() -> dict[str, set[str]]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {name: {flag for action in parser._actions for flag in action.option_strings}
            for name, parser in sub.choices.items()}


def test_every_berta_jax_command_and_flag_in_the_docs_exists():
    flags, seen, unknown = _parser_flags(), 0, []
    for page in PAGES:
        for line in _commands(page.read_text()):
            words = line.split()
            if len(words) < 2 or not re.fullmatch(r"[a-z]+", words[1]):
                continue
            command = words[1]
            if command not in flags:
                unknown.append(f"{page.name}: {line.strip()}")
                continue
            seen += 1
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line):
                if flag not in flags[command] | {"--help", "--version"}:
                    unknown.append(f"{page.name}: {command} {flag}")
    assert seen >= 10 and not unknown, unknown


def test_every_make_target_in_the_docs_exists():
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))
    named = {t for page in PAGES for t in re.findall(r"`make ([a-z][\w-]*)", page.read_text())}
    assert {"demo", "test"} <= named and named <= targets, named - targets


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, broken


def _defined(module: str) -> set[str]:
    """The top-level names a berta_jax module defines or imports, read from its source (not imported: the
    engine modules pull in Beam and Ray)."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def test_every_name_the_snippets_take_from_berta_jax_exists():
    from berta_jax import Encoder

    missing, checked = [], 0
    for page in PAGES:
        for code in python_snippets(page):
            for node in ast.walk(ast.parse(code)):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("berta_jax"):
                    package = importlib.import_module(node.module) if node.module == "berta_jax" else None
                    defined = set(dir(package)) if package else _defined(node.module)
                    missing += [f"{page.name}: {node.module}.{a.name}" for a in node.names if a.name not in defined]
                    checked += len(node.names)
    api = python_snippets(README)[0]
    calls = {n.attr for n in ast.walk(ast.parse(api)) if isinstance(n, ast.Attribute)
             and isinstance(n.value, ast.Name) and n.value.id in ("enc", "Encoder")}
    assert calls == {"from_pretrained", "encode", "encode_query", "encode_document", "encode_detailed"}
    missing += [f"Encoder.{name}" for name in calls if not hasattr(Encoder, name)]
    assert checked >= 5 and not missing, missing
