"""The Encoder API as a sentence-transformers user expects it, and its handling of bad input."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from berta_jax import ConfigError, Encoder, TruncationWarning
from tests.checkpoints import BERTA_PROMPTS, make_random_bert, write_sentence_files
from tests.helpers import sentence_transformer, torch_bert
from tests.texts import ALL, CARD_TEXTS, LONG, MIXED

BATCH_INVARIANCE_TOL = 1e-6


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir) -> Encoder:
    return Encoder.from_pretrained(tiny_bert_dir)


@pytest.fixture(scope="module")
def minilm(minilm_dir) -> Encoder:
    return Encoder.from_pretrained(minilm_dir)


# --- bad and edge input ------------------------------------------------------------------------------


def test_empty_list_gives_empty_array_without_compiling(tiny_bert_dir):
    encoder = Encoder.from_pretrained(tiny_bert_dir)
    out = encoder.encode([])
    assert out.shape == (0, 16) and out.dtype == np.float32
    assert encoder.compile_stats.count == 0


def test_an_encode_result_shows_shapes_not_arrays(tiny):
    result = tiny.encode_detailed(["one", "two words"] * 50, prompt="")
    shown = repr(result)
    assert shown.startswith(f"EncodeResult(embeddings=float32[100, {tiny.config.hidden_size}], truncated=0 of 100")
    assert len(shown) < 200 and f"padded_tokens={result.padded_tokens})" in shown


def test_empty_and_blank_strings_embed_as_prompt_plus_special_tokens(tiny):
    result = tiny.encode_detailed(["", "   ", "\n\t"], prompt="")
    assert result.num_tokens.tolist() == [2, 2, 2]  # [CLS] [SEP]
    assert np.isfinite(result.embeddings).all()
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(result.embeddings[0], result.embeddings[1])
    with_prompt = tiny.encode_detailed([""])  # default prompt: [CLS] categorize _ entailment : [SEP]
    assert with_prompt.num_tokens[0] == 2 + len(tiny.tokenizer.hf.tokenize("categorize_entailment: "))


def test_non_string_item_names_its_index(tiny):
    with pytest.raises(TypeError, match=r"texts\[2\] is NoneType"):
        tiny.encode(["a", "b", None])
    with pytest.raises(TypeError, match=r"texts\[0\] is bytes"):
        tiny.encode([b"raw"])
    with pytest.raises(TypeError, match="list of strings"):
        tiny.encode(42)


def test_a_numpy_array_of_strings_embeds_like_the_list(tiny):
    """sentence-transformers accepts a 1-D numpy array of str; other dtypes are refused naming the index."""
    texts = ["один", "two", ""]
    expected = tiny.encode(texts)
    np.testing.assert_array_equal(tiny.encode(np.array(texts)), expected)
    np.testing.assert_array_equal(tiny.encode(np.array(texts, dtype=object)), expected)
    with pytest.raises(TypeError, match=r"texts\[1\] is int, not str"):
        tiny.encode(np.array(["a", 3], dtype=object))
    with pytest.raises(TypeError, match=r"texts\[0\] is bytes_, not str"):
        tiny.encode(np.array([b"raw"]))
    with pytest.raises(TypeError, match=r"texts\[0\] is float64, not str"):
        tiny.encode(np.array([1.5]))
    with pytest.raises(TypeError, match=r"1-D array of strings, got shape \(1, 2\)"):
        tiny.encode(np.array([["a", "b"]]))


def test_single_string_gives_one_vector(tiny):
    np.testing.assert_array_equal(tiny.encode("один"), tiny.encode(["один"])[0])
    assert tiny.encode("один").shape == (16,)


def test_outputs_are_finite_with_filler_rows(tiny):
    # 3 texts in a batch of 4 rows: the padding row is all-masked and must not leak NaN anywhere
    out = tiny.encode(["a", "bb cc", "ddd"], batch_size=4)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)


def test_non_finite_embeddings_are_an_error_naming_the_texts(overflowing_bert_dir):
    from berta_jax import NonFiniteError

    encoder = Encoder.from_pretrained(overflowing_bert_dir)
    assert np.isfinite(encoder.encode(["кот", "дом"])).all()
    with pytest.raises(NonFiniteError, match=r"2 of 4 texts \(indices \[1, 3\]\)") as info:
        encoder.encode(["кот", "the river", "дом", "river bank"], batch_size=4)
    assert info.value.indices == [1, 3]


def test_bad_batch_size_is_refused(tiny):
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="batch_size"):
            tiny.encode(["x"], batch_size=bad)


# --- prompts -------------------------------------------------------------------------------------------------


def test_default_prompt_applies_unless_overridden(tiny):
    texts = CARD_TEXTS[:2]
    default = tiny.encode(texts)
    np.testing.assert_array_equal(default, tiny.encode(texts, prompt_name="categorize_entailment"))
    np.testing.assert_array_equal(default, tiny.encode(texts, prompt="categorize_entailment: "))
    np.testing.assert_array_equal(default, tiny.encode(["categorize_entailment: " + t for t in texts], prompt=""))
    assert np.abs(default - tiny.encode(texts, prompt="")).max() > 1e-3  # "" really means no prompt


def test_unknown_prompt_name_lists_the_available_ones(tiny):
    with pytest.raises(ValueError) as info:
        tiny.encode(["x"], prompt_name="search")
    assert all(name in str(info.value) for name in BERTA_PROMPTS)


def test_prompt_and_prompt_name_together_are_refused(tiny):
    with pytest.raises(ValueError, match="not both"):
        tiny.encode(["x"], prompt="a: ", prompt_name="paraphrase")


def test_retrieval_helpers_use_the_models_own_prompts(tiny):
    q, d = ["Сколько стоит?"], ["Стоит дорого."]
    np.testing.assert_array_equal(tiny.encode_query(q), tiny.encode(q, prompt_name="search_query"))
    np.testing.assert_array_equal(tiny.encode_document(d), tiny.encode(d, prompt_name="search_document"))
    np.testing.assert_array_equal(tiny.encode_query(q, prompt_name="paraphrase"), tiny.encode(q, prompt_name="paraphrase"))


def test_retrieval_helpers_without_prompts_and_without_retrieval_prompts(minilm, tiny_bert_dir, tmp_path):
    np.testing.assert_array_equal(minilm.encode_query(["q"]), minilm.encode(["q"]))  # no prompts at all
    folder = tmp_path / "m"
    shutil.copytree(tiny_bert_dir, folder)
    write_sentence_files(folder, hidden=16, max_seq_length=32, prompts={"classify": "classify: "},
                         default_prompt_name="classify")
    other = Encoder.from_pretrained(folder)
    with pytest.raises(ValueError, match="no query prompt"):
        other.encode_query(["q"])
    # the caller's explicit choice needs no retrieval prompt
    np.testing.assert_array_equal(other.encode_query(["q"], prompt_name="classify"), other.encode(["q"]))
    np.testing.assert_array_equal(other.encode_document(["q"], prompt="x: "), other.encode(["q"], prompt="x: "))


# --- truncation --------------------------------------------------------------------------------------------


def test_truncation_is_reported_never_silent(minilm):
    texts = ["short", LONG[0], "also short", LONG[1]]
    with pytest.warns(TruncationWarning, match="2 of 4 texts"):
        result = minilm.encode_detailed(texts)
    assert result.truncated.tolist() == [False, True, False, True]
    assert result.num_tokens.tolist()[1] == 256
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minilm.encode(["no warning for this one"])


def test_multi_megabyte_text_is_cut_before_tokenizing_with_the_same_result(minilm):
    L = minilm.sentence.max_seq_length
    cases = [
        "word " * 400_000,  # 2 MB of ordinary text
        "x" * 300 + " " + "y" * 2_000_000,  # one giant word near the start
        "a " * 100 + " " * 2_000_000 + "tail words here",  # a huge run of whitespace
    ]
    ours = minilm.tokenizer(cases)
    for i, text in enumerate(cases):
        ref = minilm.tokenizer.hf(text, truncation=True, max_length=L)["input_ids"]
        assert ours.input_ids[i].tolist() == ref, i
    assert ours.truncated.tolist() == [True, False, False]


def test_tokenizer_json_padding_is_not_inherited(minilm, minilm_dir):
    assert json.loads((minilm_dir / "tokenizer.json").read_text())["padding"]["strategy"] == {"Fixed": 128}
    assert minilm.encode_detailed(["Hi", "Hello there"]).num_tokens.tolist() == [3, 4]


# --- batching must not change results ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", [pytest.param("minilm", marks=pytest.mark.slow), "tiny"])
def test_embedding_is_the_same_alone_beside_long_texts_and_at_any_batch_size(which, request):
    encoder = request.getfixturevalue(which)
    text = "Женщину спасают врачи."
    alone = encoder.encode([text])[0]
    for batch_size in (1, 3, 32):  # alone in its batch, an odd small batch, a full one
        batch = encoder.encode(MIXED + [text] + LONG, batch_size=batch_size)
        assert np.abs(batch[len(MIXED)] - alone).max() <= BATCH_INVARIANCE_TOL, batch_size
    full = encoder.encode(ALL, batch_size=32)
    assert np.abs(encoder.encode(ALL, batch_size=5) - full).max() <= BATCH_INVARIANCE_TOL


def test_rows_come_back_in_input_order(minilm):
    texts = ALL[::-1]
    out = minilm.encode(texts, batch_size=4)
    for i in (0, 3, len(texts) - 1):
        np.testing.assert_allclose(out[i], minilm.encode([texts[i]])[0], atol=BATCH_INVARIANCE_TOL)


# --- pooling and normalisation ----------------------------------------------------------------------------


def test_cls_pooling_can_be_selected_frida_style(tiny_bert_dir):
    encoder = Encoder.from_pretrained(tiny_bert_dir, pooling="cls")
    texts = ["Привет", "a longer English sentence here"]
    batch = encoder.tokenizer.hf(["categorize_entailment: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        cls = torch_bert(tiny_bert_dir)(**batch).last_hidden_state[:, 0].numpy()
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    assert np.abs(encoder.encode(texts) - cls).max() <= 1e-5


def test_normalize_false_returns_the_raw_pooled_vector(minilm):
    raw = minilm.encode(CARD_TEXTS, normalize=False)
    unit = minilm.encode(CARD_TEXTS)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "mean_sqrt_len_tokens"])
def test_include_prompt_false_and_every_pooling_mode_match_sentence_transformers(tmp_path, pooling):
    folder = make_random_bert(
        tmp_path / "m", seed=3, hidden_size=24, num_attention_heads=4, num_hidden_layers=2, intermediate_size=32,
        max_position_embeddings=64, pooling=pooling, include_prompt=False, prompts=BERTA_PROMPTS,
        default_prompt_name="search_query",
    )
    encoder = Encoder.from_pretrained(folder)
    assert encoder.sentence.include_prompt is False and encoder.sentence.pooling == pooling
    ours = encoder.encode(MIXED, batch_size=4)
    ref = sentence_transformer(folder).encode(MIXED, batch_size=4)
    assert np.abs(ours - ref).max() <= 1e-5


def test_unsupported_sentence_transformers_folders_are_refused(tiny_bert_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_bert_dir, folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match="sentence_transformers.models.Dense"):
        Encoder.from_pretrained(folder)
    shutil.copy(tiny_bert_dir / "modules.json", folder / "modules.json")
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "weightedmean"}))
    with pytest.raises(ConfigError, match="weightedmean"):
        Encoder.from_pretrained(folder)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "mean"}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 33}))
    with pytest.raises(ConfigError, match="max_seq_length=33 exceeds max_position_embeddings=32"):
        Encoder.from_pretrained(folder)


# --- token-level API -------------------------------------------------------------------------------------


def test_token_embeddings_checks_ids_before_jax_clamps_them(tiny):
    ids = np.array([[2, 10, 3], [2, 55083, 3]])
    with pytest.raises(ValueError, match=r"input_ids\[1, 1\] = 55083 is outside \[0, 55083\)"):
        tiny.token_embeddings(ids, np.ones_like(ids))
    with pytest.raises(ValueError, match=r"token_type_ids\[0, 2\] = 2"):
        tiny.token_embeddings(ids[:1], np.ones((1, 3)), np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match="must be the same"):
        tiny.token_embeddings(ids, np.ones((2, 4)))
    assert tiny.token_embeddings(ids[:1], np.ones((1, 3))).shape == (1, 3, 16)


def test_padding_tokens_do_not_influence_real_tokens(tiny):
    ids = np.array([[2, 50, 60, 3, 0, 0]])
    mask = np.array([[1, 1, 1, 1, 0, 0]])
    a = np.asarray(tiny.token_embeddings(ids, mask))
    b = np.asarray(tiny.token_embeddings(np.array([[2, 50, 60, 3, 777, 9]]), mask))
    np.testing.assert_array_equal(a[:, :4], b[:, :4])


def test_tokenizer_larger_than_embedding_table_is_refused(tiny_bert_dir, tmp_path):
    folder = make_random_bert(tmp_path / "m", vocab_size=1000, hidden_size=16, num_attention_heads=2,
                              num_hidden_layers=1, intermediate_size=24, max_position_embeddings=32)
    shutil.copy(tiny_bert_dir / "tokenizer.json", folder / "tokenizer.json")  # 55083 tokens
    with pytest.raises(ConfigError, match="tokenizer has 55083 tokens but the model's embedding table has vocab_size=1000"):
        Encoder.from_pretrained(folder)


def test_do_lower_case_is_honoured_like_sentence_transformers(tiny_bert_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": True}))
    encoder = Encoder.from_pretrained(folder)
    texts = ["Москва HELLO", "Кот"]
    np.testing.assert_array_equal(encoder.encode(texts), encoder.encode([t.lower() for t in texts]))
    assert np.abs(encoder.encode(texts) - sentence_transformer(folder).encode(texts)).max() <= 1e-5


def test_context_without_sentence_bert_config_is_capped_by_the_tokenizer_like_sentence_transformers(
        tiny_bert_dir, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "sentence_bert_config.json").unlink()
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "model_max_length": 8}))
    encoder, reference = Encoder.from_pretrained(folder), sentence_transformer(folder)
    assert encoder.sentence.max_seq_length == reference.max_seq_length == 8  # not the 32 positions of config.json
    texts = ["один два три четыре пять шесть семь восемь девять десять", "кот"]
    assert encoder.encode_detailed(texts).truncated.tolist() == [True, False]
    assert np.abs(encoder.encode(texts) - reference.encode(texts)).max() <= 1e-5
