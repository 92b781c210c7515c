"""Distillation students and the fortunes example in miniature (the slow tier: each trains or loads
models in sentence-transformers)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from berta_jax import Encoder
from berta_jax.errors import ConfigError
from berta_jax.train.students import keep_layers, new_student

pytestmark = pytest.mark.slow
PROMPTS = {"search_query": "search_query: ", "search_document": "search_document: "}
TEXTS = ["Боюсь, что земной шар - пробный.", "A fool and his money are soon parted.", ""]


def _example():
    path = Path(__file__).resolve().parent.parent / "examples" / "distill.py"
    spec = importlib.util.spec_from_file_location("distill_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sentence_transformers_agrees(folder: Path, width: int) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    assert model.get_embedding_dimension() == width
    assert model.prompts["search_document"] == "search_document: "
    theirs = model.encode(TEXTS, prompt_name="search_document")
    ours = Encoder.from_pretrained(folder).encode(TEXTS, prompt_name="search_document")
    assert ours.shape == (len(TEXTS), width)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_keep_layers_copies_the_chosen_layers_and_loads_in_sentence_transformers(minilm_dir,
                                                                                 tmp_path):
    folder = keep_layers(minilm_dir, [0, 2, 4], tmp_path / "student", prompts=PROMPTS)
    config = json.loads((folder / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and config["hidden_size"] == 384
    teacher = load_file(str(minilm_dir / "model.safetensors"))
    student = load_file(str(folder / "model.safetensors"))
    for new, old in ((0, 0), (1, 2), (2, 4)):
        name = "encoder.layer.{}.attention.self.query.weight"
        np.testing.assert_array_equal(student[name.format(new)], teacher[name.format(old)])
    assert not any(k.startswith("encoder.layer.3.") for k in student)
    np.testing.assert_array_equal(student["embeddings.word_embeddings.weight"],
                                  teacher["embeddings.word_embeddings.weight"])
    assert (folder / "tokenizer.json").read_bytes() == (minilm_dir / "tokenizer.json").read_bytes()
    _sentence_transformers_agrees(folder, 384)


def test_new_student_is_a_narrower_random_bert_that_loads_in_sentence_transformers(minilm_dir,
                                                                                  tmp_path):
    folder = new_student(minilm_dir, tmp_path / "narrow", 48, 4, 2, 96, seed=3, prompts=PROMPTS)
    again = new_student(minilm_dir, tmp_path / "again", 48, 4, 2, 96, seed=3)
    weights = load_file(str(folder / "model.safetensors"))
    assert weights["embeddings.word_embeddings.weight"].shape == (30522, 48)
    assert weights["encoder.layer.1.intermediate.dense.weight"].shape == (96, 48)
    assert np.all(weights["embeddings.word_embeddings.weight"][0] == 0)  # the padding row
    assert np.all(weights["encoder.layer.0.attention.output.LayerNorm.weight"] == 1)
    assert abs(float(weights["encoder.layer.0.output.dense.weight"].std()) - 0.02) < 0.002
    np.testing.assert_array_equal(weights["encoder.layer.0.output.dense.weight"],
                                  load_file(str(again / "model.safetensors"))[
                                      "encoder.layer.0.output.dense.weight"])
    with pytest.raises(ConfigError, match="not an empty folder"):
        new_student(minilm_dir, folder, 48, 4, 2, 96, seed=4)
    assert load_file(str(folder / "model.safetensors")).keys() == weights.keys()
    with pytest.raises(ConfigError, match="outside the teacher's folder"):
        keep_layers(minilm_dir, [0], minilm_dir / "student")
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 48
    _sentence_transformers_agrees(folder, 48)


@pytest.mark.parametrize("layers", [[], [0, 6], [1, 1], [-1]])
def test_keep_layers_refuses_bad_indices_naming_them(minilm_dir, tmp_path, layers):
    with pytest.raises(ConfigError, match=r"layers=.*0\.\.5"):
        keep_layers(minilm_dir, layers, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_new_student_refuses_heads_that_do_not_divide_the_width(minilm_dir, tmp_path):
    with pytest.raises(ConfigError, match="num_attention_heads=5"):
        new_student(minilm_dir, tmp_path / "bad", 48, 5, 2, 96, seed=0)


def test_the_fortunes_example_in_miniature_raises_the_cosine_to_the_teacher(minilm_dir, tmp_path):
    example = _example()
    if not Path(example.FORTUNES, "ru").is_dir():
        pytest.skip(f"{example.FORTUNES}/ru missing: apt-get install -y fortunes fortunes-ru")
    quotes = example.read_fortunes()
    assert len(quotes) == len(set(quotes)) and any("ж" in q for q in quotes)
    assert all("\n" not in q and q.strip() != "%" for q in quotes)
    args = ["--out", str(tmp_path / "out"), "--teacher", str(minilm_dir), "--runs", "layers,project",
            "--train-texts", "48", "--held-out", "24", "--steps", "6", "--narrow-steps", "6",
            "--batch-size", "8", "--max-seq-length", "32", "--no-progress"]
    results = example.main(args, log=lambda *_: None)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["held_out"] == 24
    for run in results["runs"]:
        assert run["after"]["cosine"] > run["before"]["cosine"], run["student"]
    from sentence_transformers import SentenceTransformer

    trained = results["runs"][0]["model"]
    theirs = SentenceTransformer(trained, device="cpu").encode(TEXTS, prompt_name="search_document")
    ours = Encoder.from_pretrained(trained).encode(TEXTS, prompt_name="search_document")
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
