"""Parity with the PyTorch reference (transformers BertModel, sentence-transformers), CPU, float32.

Embeddings are checked on both batch paths: packed rows (the default) and one text per padded row.
Every check goes through `berta_jax.parity.compare`, the comparison `berta-jax parity` prints, stage by stage:
the embeddings output and every layer's hidden states within 1e-4 (max abs over real tokens) of transformers;
the pooled vectors and the normalised sentence embeddings within 1e-5 of sentence-transformers. bfloat16
compute must stay at cosine >= 0.999 to the float32 reference on every text.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from berta_jax import Encoder
from berta_jax.parity import Reference, compare
from tests.checkpoints import BERTA_PROMPTS
from tests.texts import ALL, CARD_TEXTS, LONG, MIXED

EMBED_TOL = 1e-5
HIDDEN_TOL = 1e-4
BF16_MIN_COSINE = 0.999


def assert_parity(report) -> None:
    """Every stage within its bar; the message names the first stage that is not."""
    assert report.first_failure(HIDDEN_TOL, EMBED_TOL) is None, report.stages()
    assert max(report.layer_max_abs) <= HIDDEN_TOL
    if report.pooled_max_abs is not None:
        assert report.pooled_max_abs <= EMBED_TOL and report.embedding_max_abs <= EMBED_TOL


def _expected_truncated(encoder: Encoder, texts, prompt: str) -> list[bool]:
    """Which texts are longer than the context, counted by the reference tokenizer without truncation."""
    lengths = [len(encoder.tokenizer.hf(prompt + t, truncation=False)["input_ids"]) for t in texts]
    return [n > encoder.sentence.max_seq_length for n in lengths]


def unpacked(encoder: Encoder) -> Encoder:
    """The same model and folder with one text per padded row (the path `packing=False` selects)."""
    return Encoder(encoder.model, encoder.tokenizer, encoder.sentence, packing=False)


def _min_cosine(a, b) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))


# --- BERTA-shaped (12 x 768, vocab 55083), random weights -----------------------------------------


@pytest.fixture(scope="module")
def berta(berta_shaped_dir):
    return Encoder.from_pretrained(berta_shaped_dir), Reference.load(berta_shaped_dir)


def test_berta_shaped_tokenizer_reaches_the_whole_embedding_table(berta):
    """The fixture's own spec: real WordPiece splits, no [UNK], ids near the top of the 55083-row table."""
    encoder, _ = berta
    ids = encoder.tokenizer(ALL).input_ids
    assert all(encoder.tokenizer.hf.unk_token_id not in row for row in ids)
    assert max(int(row.max()) for row in ids) > 50_000


def test_berta_shaped_default_prompt_matches_at_every_stage(berta):
    encoder, reference = berta
    assert encoder.sentence.default_prompt_name == "categorize_entailment"
    report = compare(encoder, reference, ALL, prompt="categorize_entailment: ")
    assert_parity(report)
    ours = encoder.encode_detailed(ALL)  # the default prompt; batch-size invariance is test_fuzz's and test_encoder's
    ref = report.reference_embeddings  # SentenceTransformer.encode(ALL) with its default prompt, batches of 4
    assert ours.embeddings.shape == (len(ALL), 768) and np.abs(ours.embeddings - ref).max() <= EMBED_TOL
    assert np.abs(unpacked(encoder).encode(ALL, batch_size=8) - ref).max() <= EMBED_TOL  # both paths
    # the two LONG texts go past 512 tokens; everything else fits
    assert ours.truncated.tolist() == _expected_truncated(encoder, ALL, "categorize_entailment: ")
    assert ours.truncated[-len(LONG):].all()
    assert ours.num_tokens.max() == 512


@pytest.mark.parametrize("prompt_name", sorted(BERTA_PROMPTS))
def test_berta_shaped_every_prompt_matches_sentence_transformers(berta, prompt_name):
    encoder, reference = berta
    texts = [CARD_TEXTS[0], CARD_TEXTS[5], "English text, too.", ""]
    ours = encoder.encode(texts, prompt_name=prompt_name)
    ref = reference.sentence_transformer.encode(texts, prompt_name=prompt_name, convert_to_numpy=True)
    assert np.abs(ours - ref).max() <= EMBED_TOL


@pytest.mark.slow
def test_berta_shaped_bfloat16_close_to_float32(berta, berta_shaped_dir):
    _, reference = berta
    fast = Encoder.from_pretrained(berta_shaped_dir, dtype=jnp.bfloat16)
    assert _min_cosine(fast.encode(MIXED), reference.sentence_transformer.encode(MIXED)) >= BF16_MIN_COSINE


# --- the real all-MiniLM-L6-v2 -------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return Encoder.from_pretrained(minilm_dir), Reference.load(minilm_dir)


def test_minilm_matches_at_every_stage(minilm):
    encoder, reference = minilm
    assert_parity(compare(encoder, reference, MIXED + LONG))
    ours = encoder.encode_detailed(ALL, batch_size=16)
    ref = reference.sentence_transformer.encode(ALL, batch_size=16)
    assert np.abs(ours.embeddings - ref).max() <= EMBED_TOL
    assert np.abs(unpacked(encoder).encode(ALL, batch_size=16) - ref).max() <= EMBED_TOL  # both paths
    assert ours.truncated.tolist() == _expected_truncated(encoder, ALL, "")  # max_seq_length 256 from the folder
    assert ours.num_tokens.max() == 256


@pytest.mark.parametrize("prompt", sorted(BERTA_PROMPTS.values()))
def test_minilm_with_berta_prompt_strings_matches_sentence_transformers(minilm, prompt):
    encoder, reference = minilm
    texts = CARD_TEXTS[:3] + ["A short English sentence."]
    assert np.abs(encoder.encode(texts, prompt=prompt) - reference.sentence_transformer.encode(texts, prompt=prompt)).max() <= EMBED_TOL


def test_minilm_bfloat16_close_to_float32(minilm, minilm_dir):
    _, reference = minilm
    fast = Encoder.from_pretrained(minilm_dir, dtype=jnp.bfloat16)
    assert _min_cosine(fast.encode(ALL), reference.sentence_transformer.encode(ALL)) >= BF16_MIN_COSINE


# --- small random BERTs of odd shapes ---------------------------------------------------------------


def test_odd_shapes_match_at_every_stage(odd_bert_dir):
    encoder, reference = Encoder.from_pretrained(odd_bert_dir), Reference.load(odd_bert_dir)
    assert_parity(compare(encoder, reference, ALL))
    st = reference.sentence_transformer
    assert np.abs(encoder.encode(ALL, batch_size=5) - st.encode(ALL, batch_size=5)).max() <= EMBED_TOL
    for name in ("search_query", "categorize_topic"):
        assert np.abs(encoder.encode(MIXED, prompt_name=name) - st.encode(MIXED, prompt_name=name)).max() <= EMBED_TOL


def test_odd_shapes_hidden_states_with_token_types_match_transformers(odd_bert_dir):
    encoder = Encoder.from_pretrained(odd_bert_dir)
    reference = Reference(Reference.load(odd_bert_dir).bert, None)
    batch = encoder.tokenizer.hf(MIXED, padding=True, truncation=True, return_tensors="np")
    types = np.random.default_rng(0).integers(0, encoder.config.type_vocab_size, size=batch["input_ids"].shape)
    assert_parity(compare(encoder, reference, MIXED, token_type_ids=types))


def test_a_porting_bug_is_pinned_to_its_stage(tiny_bert_dir):
    """A perturbed second layer: the comparison is exact up to layer 1 and names layer 2 as the first failure. The
    edit is made to the encoder's model in place: the encoder runs the weights its model holds now."""
    encoder, reference = Encoder.from_pretrained(tiny_bert_dir), Reference.load(tiny_bert_dir)
    encoder.encode(MIXED[:2])  # the weights placed on the devices before the edit
    kernel = encoder.model.layers.ffn_out.kernel
    kernel[...] = kernel[...].at[1].multiply(1.05)
    report = compare(encoder, reference, MIXED[:6])
    assert report.first_failure(HIDDEN_TOL, EMBED_TOL) == "layer 2"
    assert max(report.layer_max_abs[:2]) <= 1e-5

