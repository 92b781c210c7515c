"""The README's Python snippets run as written, in order, in one namespace: on a folder with BERTA's files and
prompts (random weights; 256 wide, so the snippet's truncate_dim=256 applies, and one layer, so it runs in
seconds) in place of the hub id, since the hub cannot be reached in tests."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.checkpoints import BERTA_PROMPTS, make_random_bert

README = Path(__file__).resolve().parent.parent / "README.md"


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.fixture(scope="module")
def berta_like_dir(tmp_path_factory):
    return make_random_bert(tmp_path_factory.mktemp("readme") / "model", seed=3, prompts=BERTA_PROMPTS,
                            default_prompt_name="categorize_entailment", hidden_size=256, num_attention_heads=4,
                            num_hidden_layers=1, intermediate_size=64, max_position_embeddings=64, vocab_size=2000)


def test_the_readme_python_snippets_run_as_written(berta_like_dir, tmp_path, monkeypatch):
    snippets = python_snippets()
    assert len(snippets) >= 2 and '"sergeyzh/BERTA"' in snippets[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for code in snippets:
        exec(compile(code.replace('"sergeyzh/BERTA"', repr(str(berta_like_dir))), str(README), "exec"), namespace)
    assert namespace["emb"].shape == (1, 256) and namespace["res"].embeddings.shape == (1, 256)
    assert not np.allclose(namespace["q"], namespace["d"])  # different prompts, different texts
    assert (tmp_path / "out" / "model.safetensors").is_file()
