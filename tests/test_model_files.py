"""Class D: every file read from a model folder is a regular file inside the folder, size-bounded, parsed into a
typed structure with every field checked; the tokenizer must exist and agree with the model.

Each failure is a BertaJaxError naming the file (and the field), never another exception, a hang or a read
without end. The hypothesis test feeds every JSON file of a model folder through type confusions.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from berta_jax import BertaJaxError, ConfigError, Encoder
from berta_jax.loading.folder import ModelFolder
from tests.checkpoints import make_random_bert


@pytest.fixture
def model(tiny_bert_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    return folder


def load_error(folder, error=ConfigError) -> str:
    with pytest.raises(error) as info:
        Encoder.from_pretrained(folder)
    return str(info.value)


def edit_json(path, **changes) -> None:
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_a_folder_without_tokenizer_files_is_refused(model):
    (model / "tokenizer.json").unlink()
    (model / "vocab.txt").unlink(missing_ok=True)
    assert "no tokenizer.json or vocab.txt" in load_error(model)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), "1e-12", -1.0, 0, True, [1e-12], None])
def test_layer_norm_eps_must_be_a_finite_positive_number(model, value):
    edit_json(model / "config.json", layer_norm_eps=value)
    msg = load_error(model)
    assert "config.json" in msg and "layer_norm_eps" in msg


@pytest.mark.parametrize("file, field, value", [
    ("sentence_bert_config.json", "do_lower_case", "false"),
    ("sentence_bert_config.json", "max_seq_length", "32"),
    ("config_sentence_transformers.json", "prompts", ["a", "b"]),
    ("config_sentence_transformers.json", "default_prompt_name", 3),
    ("1_Pooling/config.json", "include_prompt", "yes"),
    ("1_Pooling/config.json", "pooling_mode_mean_tokens", 1),
    ("tokenizer_config.json", "model_max_length", "512"),
    ("tokenizer_config.json", "do_lower_case", "no"),
    ("config.json", "hidden_size", 16.0),
    ("config.json", "hidden_act", ["gelu"]),
])
def test_a_field_of_the_wrong_type_names_file_and_field(model, file, field, value):
    edit_json(model / file, **{field: value})
    msg = load_error(model)
    assert file.split("/")[-1] in msg and field in msg


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "directory", "outside", "loop"])
def test_config_json_must_be_a_regular_file_inside_the_folder(model, tmp_path, kind):
    target = model / "config.json"
    target.unlink()
    if kind == "dev-zero":
        target.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(target)  # opening it would block forever: it must never be opened
    elif kind == "directory":
        target.mkdir()
    elif kind == "outside":
        (tmp_path / "elsewhere.json").write_text("{}")
        target.symlink_to(tmp_path / "elsewhere.json")
    else:
        target.symlink_to(target)
    msg = load_error(model)
    assert "config.json" in msg
    assert {"dev-zero": "character device", "fifo": "FIFO", "directory": "directory",
            "outside": "outside the model folder", "loop": "cannot be resolved"}[kind] in msg


def test_an_oversized_config_is_refused_before_it_is_read(model):
    (model / "sentence_bert_config.json").write_text(" " * (17 * 2**20) + "{}")
    assert "over the 16777216-byte limit" in load_error(model)


def test_a_config_that_disagrees_with_the_weights_says_why_first_and_briefly(model):
    edit_json(model / "config.json", hidden_size=32, num_attention_heads=2)
    msg = load_error(model, BertaJaxError)  # the pooling config is read first and disagrees too
    assert "word_embedding_dimension=16 does not match config.json's hidden_size=32" in msg
    for name in ("modules.json", "config_sentence_transformers.json"):
        (model / name).unlink()
    shutil.rmtree(model / "1_Pooling")
    msg = load_error(model, BertaJaxError)
    assert "config.json says hidden_size=32; the weights have hidden_size=16" in msg
    assert len(msg) < 1500 and "more)" in msg


def test_a_tokenizer_that_does_not_fit_the_model_names_the_tokenizer(tiny_bert_dir, tmp_path):
    folder = make_random_bert(tmp_path / "m", vocab_size=1000, hidden_size=16, num_attention_heads=2,
                              num_hidden_layers=1, intermediate_size=24, max_position_embeddings=32)
    shutil.copy(tiny_bert_dir / "tokenizer.json", folder / "tokenizer.json")  # 55083 tokens
    msg = load_error(folder)
    assert str(folder) in msg and "tokenizer has 55083 tokens" in msg and "vocab_size=1000" in msg


def test_hub_snapshots_may_link_into_the_repository_cache(model, tmp_path):
    """Hugging Face snapshots are symlinks into ../../blobs: inside the repository's cache, so allowed."""
    repo = tmp_path / "hub" / "models--owner--name"
    snapshot = repo / "snapshots" / "0123abcd"
    blobs = repo / "blobs"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in model.rglob("*"):
        if path.is_file():
            rel = path.relative_to(model)
            blob = blobs / rel.as_posix().replace("/", "__")
            shutil.copy(path, blob)
            (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / rel).symlink_to(os.path.relpath(blob, (snapshot / rel).parent))
    assert Encoder.from_pretrained(snapshot).encode(["ok"]).shape == (1, 16)


# --- type confusion over every JSON file of a folder ----------------------------------------------------

_JSON_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", "sentence_bert_config.json", "config_sentence_transformers.json",
               "1_Pooling/config.json", "modules.json", "special_tokens_map.json"]
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                    st.lists(st.integers(0, 3), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@st.composite
def confusion(draw):
    """(file, mutated document): the whole document or one (nested) field replaced by a value of another type."""
    name = draw(st.sampled_from([n for n in _JSON_FILES if n != "special_tokens_map.json"]))
    return name, draw(st.integers(0, 2**32)), draw(_VALUES), draw(st.booleans())


def _mutate(doc, seed: int, value, whole: bool):
    if whole or not isinstance(doc, (dict, list)) or not doc:
        return value
    if isinstance(doc, list):
        index = seed % len(doc)
        item = doc[index]
        if isinstance(item, dict) and item:
            key = sorted(item)[seed // 7 % len(item)]
            return [*doc[:index], {**item, key: value}, *doc[index + 1:]]
        return [*doc[:index], value, *doc[index + 1:]]
    key = sorted(doc)[seed % len(doc)]
    return {**doc, key: value}


@pytest.fixture(scope="module")
def pristine(tiny_bert_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("confusion") / "model"
    shutil.copytree(tiny_bert_dir, folder)
    return folder


@settings(max_examples=int(os.environ.get("BERTA_JAX_CONFUSION_EXAMPLES", 60)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=confusion())
def test_type_confusion_in_any_config_file_is_a_named_error(pristine, case):
    name, seed, value, whole = case
    path = pristine / name
    original = path.read_text()
    try:
        path.write_text(json.dumps(_mutate(json.loads(original), seed, value, whole)))
        try:
            folder = ModelFolder.open(pristine)
            from berta_jax.text.tokenize import TextTokenizer

            TextTokenizer.from_files(folder.files, folder.sentence.max_seq_length, folder.config.vocab_size,
                                     folder.sentence.lowercase)
        except BertaJaxError as e:
            assert name.split("/")[-1] in str(e), (name, str(e)[:300])
    finally:
        path.write_text(original)
