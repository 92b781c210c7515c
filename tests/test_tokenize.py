"""The tokenizer step: sentence-transformers 6 semantics (lowercasing, prompt length, truncate_dim) and a cost per
text bounded by the context whatever the text, with the same tokens as tokenizing it whole."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from berta_jax import Encoder
from berta_jax.text.tokenize import TextTokenizer
from tests.helpers import sentence_transformer

EMBED_TOL = 1e-5
CASE_TEXTS = ["ΣΑΣ ΌΣΟΣ ΛΌΓΟΣ.", "İstanbul ıIiİ", "STRASSE ß ẞ groß", "ﬁne ﬂow ﬀ", "e\u0301te\u0301 A\u030a",
              "ΣΑΣ", "Москва HELLO", "Ǆemal ǅ ǆ"]


@pytest.fixture(scope="module")
def lowercasing_minilm(minilm_dir, tmp_path_factory):
    """all-MiniLM-L6-v2 with do_lower_case: true (sentence-transformers then puts a Lowercase normalizer first)."""
    folder = tmp_path_factory.mktemp("lower") / "minilm"
    shutil.copytree(minilm_dir, folder)
    config = json.loads((folder / "sentence_bert_config.json").read_text())
    (folder / "sentence_bert_config.json").write_text(json.dumps({**config, "do_lower_case": True}))
    return folder


def test_lowercasing_is_sentence_transformers_own(lowercasing_minilm):
    ours, reference = Encoder.from_pretrained(lowercasing_minilm), sentence_transformer(lowercasing_minilm)
    for text in CASE_TEXTS:  # the same token ids (Python's str.lower() gives a final ς where tokenizers gives σ)
        assert ours.tokenizer([text]).input_ids[0].tolist() == reference.tokenize([text])["input_ids"][0].tolist(), text
    assert np.abs(ours.encode(CASE_TEXTS) - reference.encode(CASE_TEXTS)).max() <= EMBED_TOL
    assert np.abs(ours.encode(CASE_TEXTS, prompt="ΣΧΌΛΙΟ: ")
                  - reference.encode(CASE_TEXTS, prompt="ΣΧΌΛΙΟ: ")).max() <= EMBED_TOL


def test_a_prompt_longer_than_the_context_with_include_prompt_false(tiny_bert_dir, tmp_path):
    """sentence-transformers measures the prompt after truncation, so the final [SEP] stays pooled: a unit vector."""
    from tests.checkpoints import write_sentence_files

    folder = tmp_path / "m"
    shutil.copytree(tiny_bert_dir, folder)
    write_sentence_files(folder, hidden=16, max_seq_length=8, include_prompt=False,
                         prompts={"long": "a very long prompt with many words in it: "}, default_prompt_name="long")
    ours, reference = Encoder.from_pretrained(folder), sentence_transformer(folder)
    texts = ["short", "a text that is long too", ""]
    got = ours.encode(texts)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
    assert np.abs(got - reference.encode(texts)).max() <= EMBED_TOL


def test_truncate_dim_follows_sentence_transformers(minilm_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    texts = ["Женщину спасают врачи.", "The quick brown fox.", ""]
    ours = Encoder.from_pretrained(minilm_dir, truncate_dim=64)
    reference = SentenceTransformer(str(minilm_dir), device="cpu", truncate_dim=64)
    assert ours.embedding_dim == 64 and ours.encode(texts).shape == (3, 64)
    assert np.abs(ours.encode(texts) - reference.encode(texts)).max() <= EMBED_TOL  # not renormalised
    assert np.abs(ours.encode(texts, normalize=True)
                  - reference.encode(texts, normalize_embeddings=True)).max() <= EMBED_TOL
    assert np.abs(ours.encode_query(texts, truncate_dim=32) - reference.encode_query(texts, truncate_dim=32)).max() \
        <= EMBED_TOL
    with pytest.raises(ValueError, match=r"truncate_dim=385 must be an integer in \[1, 384\]"):
        ours.encode(texts, truncate_dim=385)
    folder = tmp_path / "m"
    shutil.copytree(minilm_dir, folder)
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    (folder / "config_sentence_transformers.json").write_text(json.dumps({**config, "truncate_dim": 48}))
    assert Encoder.from_pretrained(folder).encode(texts).shape == (3, 48)  # the folder's own setting


def test_retrieval_helpers_say_once_when_the_model_has_no_prompts(minilm_dir):
    encoder = Encoder.from_pretrained(minilm_dir)
    from berta_jax.runtime import encoder as encoder_module

    encoder_module._WARNED.clear()
    with pytest.warns(UserWarning, match="defines no prompts, so encode_query embeds without one"):
        encoder.encode_query(["q"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.encode_query(["q"])  # once only


# --- bounded cost, same tokens ------------------------------------------------------------------------------

_PIECES = ["a", "b", "я", "Ж", ".", ",", "!", "-", " ", "  ", "\t", "\n", "\u3000", "\u2028", "中", "国", "\u0301",
           "\u0308", "\x00", "\x7f", "\ufffd", "\u200b", "é", "İ", "ß", "ﬁ", "Σ", "😀", "©", "\u1fef", "$", "`",
           "word", "слово", "x" * 150, "ж" * 120, "a\u0301" * 60, " " * 300, "中" * 50, "a." * 80]


@pytest.fixture(scope="module", params=["minilm_dir", "tiny_bert_dir"])
def small_context_tokenizer(request):
    """A real tokenizer (MiniLM: lowercasing, accent stripping; the test vocabulary: cased) at an 8-token context,
    so that a few thousand characters already exercise the reducer."""
    folder = request.getfixturevalue(request.param)
    encoder = Encoder.from_pretrained(folder, max_seq_length=8)
    return TextTokenizer(encoder.tokenizer.hf, 8, encoder.config.vocab_size, lowercase=request.param == "tiny_bert_dir")


@settings(max_examples=int(os.environ.get("BERTA_JAX_REDUCER_EXAMPLES", 150)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from(_PIECES), min_size=1, max_size=400))
def test_the_bounded_prefix_tokenizes_exactly_like_the_whole_text(small_context_tokenizer, pieces):
    tokenizer = small_context_tokenizer
    text = "".join(pieces)
    ours = tokenizer([text])
    whole = tokenizer.hf([text], truncation=True, max_length=8, return_overflowing_tokens=True)
    assert ours.input_ids[0].tolist() == whole["input_ids"][0]
    assert bool(ours.truncated[0]) == (len(whole["input_ids"]) > 1)


_ORDINARY_PIECES = list(_PIECES)


def _spelled_with_deleted_characters(tokens: list[str]) -> list[str]:
    """Each added token with a deleted character (soft hyphen, zero-width space, NUL, a combining mark, a run of them)
    inside, at its start and at its end, and cut in two by spaces: pieces a reducer must not join into the token."""
    inserts = ["\u00ad", "\u200b", "\x00", "\u0301", "\u00ad\u200b\x00\u0301", " ", "\u00ad \u00ad"]
    return [t[:i] + c + t[i:] for t in tokens for c in inserts for i in range(len(t) + 1)] + tokens


@pytest.fixture(scope="module")
def added_token_pieces(small_context_tokenizer):
    return _spelled_with_deleted_characters([t.content for t in small_context_tokenizer.hf.added_tokens_decoder.values()])


@settings(max_examples=int(os.environ.get("BERTA_JAX_REDUCER_EXAMPLES", 50)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_added_tokens_spelled_with_deleted_characters_tokenize_like_the_whole_text(small_context_tokenizer,
                                                                                      added_token_pieces, data):
    """The tokenizer matches [SEP] and the other added tokens on the raw text, before its normalizer deletes soft
    hyphens and marks: the reducer may not join "[SEP\u00ad]" into [SEP]. Random texts over the limit built from
    such spellings, real added tokens and ordinary pieces give the whole text's first tokens."""
    tokenizer = small_context_tokenizer
    pieces = st.sampled_from(added_token_pieces) | st.sampled_from(_ORDINARY_PIECES)
    head = "".join(data.draw(st.lists(pieces, min_size=1, max_size=100)))
    tail = "".join(data.draw(st.lists(pieces, max_size=100)))
    text = head * (tokenizer.reducer.limit // len(head) + 1) + tail  # over the limit, every piece of it drawn
    ours = tokenizer([text])
    whole = tokenizer.hf([text], truncation=True, max_length=8, return_overflowing_tokens=True)
    assert ours.input_ids[0].tolist() == whole["input_ids"][0]
    assert bool(ours.truncated[0]) == (len(whole["input_ids"]) > 1)


@pytest.mark.parametrize("spelling", ["[SEP\u00ad]", "\u00ad[SEP]", "[SEP]\u00ad", "[\u200bCLS]", "[MA\x00SK]",
                                      "[UN\u0301K]", "[PAD\u00ad\u00ad]"])
def test_a_long_text_with_a_broken_special_token_keeps_it_broken(small_context_tokenizer, spelling):
    tokenizer = small_context_tokenizer
    text = f"{spelling} hello world " * 3000
    whole = tokenizer.hf([text[: 4 * tokenizer.reducer.limit]], truncation=True, max_length=8)["input_ids"][0]
    assert tokenizer([text]).input_ids[0].tolist() == whole


@pytest.fixture(scope="module")
def stripping_tokenizer(minilm_dir):
    """MiniLM's tokenizer with [MASK] taking the spaces on both sides (lstrip, rstrip) and a plain added token that
    is a word's piece ("zz", matched inside words on the raw text)."""
    from tokenizers import Tokenizer

    spec = json.loads((minilm_dir / "tokenizer.json").read_text())
    spec["added_tokens"] = [{**t, "lstrip": t["content"] == "[MASK]", "rstrip": t["content"] == "[MASK]"}
                            for t in spec["added_tokens"]]
    spec["added_tokens"].append({"id": 30521, "content": "zz", "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": False})
    return spec, Tokenizer.from_str(json.dumps(spec))


@settings(max_examples=int(os.environ.get("BERTA_JAX_REDUCER_EXAMPLES", 25)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_added_tokens_that_strip_spaces_or_split_words_tokenize_like_the_whole_text(stripping_tokenizer, data):
    from berta_jax.text.wordpiece import Reducer

    spec, tokenizer = stripping_tokenizer
    reducer = Reducer.for_tokenizer(spec, 8)
    assert isinstance(reducer, Reducer)
    pieces = st.sampled_from(_spelled_with_deleted_characters(["[MASK]", "zz", "[SEP]"]) + _ORDINARY_PIECES
                             + ["xzzx", "z", "  \u00ad  ", "x" * 99])
    head = "".join(data.draw(st.lists(pieces, min_size=1, max_size=100)))
    text = head * (reducer.limit // len(head) + 1) + "".join(data.draw(st.lists(pieces, max_size=100)))
    whole = tokenizer.encode(text, add_special_tokens=False).ids[:9]
    assert tokenizer.encode(reducer(text), add_special_tokens=False).ids[:9] == whole


def test_added_tokens_the_reducer_cannot_keep_apart_leave_the_text_unchanged(minilm_dir):
    """Tokens matched on normalized text (what add_tokens makes), whole words only, or holding a space or a deleted
    character: the reducer does not model their split, so the text goes to the tokenizer unchanged."""
    from berta_jax.text.wordpiece import Reducer, Unchanged

    spec = json.loads((minilm_dir / "tokenizer.json").read_text())
    assert isinstance(Reducer.for_tokenizer(spec, 8), Reducer)
    plain = {"id": 999, "content": "zz", "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": False}
    assert isinstance(Reducer.for_tokenizer({**spec, "added_tokens": [*spec["added_tokens"], plain]}, 8), Reducer)
    for change in [{"normalized": True}, {"single_word": True}, {"content": "a b"}, {"content": "z\u00adz"},
                   {"content": "z\u0301"}, {"content": ""}]:
        spec_with = {**spec, "added_tokens": [*spec["added_tokens"], {**plain, **change}]}
        assert isinstance(Reducer.for_tokenizer(spec_with, 8), Unchanged), change


_PIECES = st.sampled_from(["word", " ", "   ", "\t\n", "\x00", "\u0301", "xxxxxxxxx", "a.", "中", "é", "\u200b"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(_PIECES, min_size=1, max_size=400), strip_accents=st.booleans())
def test_the_reducer_reads_a_prefix_and_gives_what_rewriting_the_whole_text_gives(pieces, strip_accents):
    """A tiny context (limit 48 characters, words cut past 5) so that every rewrite meets the ends of the prefixes
    the reducer reads: its answer is the whole text's rewrite cut at the limit."""
    from berta_jax.text.wordpiece import Reducer

    reducer = Reducer(max_seq_length=6, max_word=4, clean_text=True, strip_accents=strip_accents, cjk=True)
    text = "".join(pieces)
    assert reducer(text) == (text if len(text) <= reducer.limit else reducer._rewrite(text)[: reducer.limit])


def test_a_sixty_megabyte_line_is_rewritten_from_a_prefix_only(monkeypatch):
    """The cost of a huge line is what its context needs: the rewrites see a few times the limit, not the line."""
    from berta_jax.text.wordpiece import Reducer

    reducer = Reducer(max_seq_length=256, max_word=100, clean_text=True, strip_accents=True, cjk=True)
    seen, rewrite = [], Reducer._rewrite
    monkeypatch.setattr(Reducer, "_rewrite", lambda self, text: seen.append(len(text)) or rewrite(self, text))
    line = "слово word, " * 5_000_000  # 60 M characters
    assert len(reducer(line)) == reducer.limit and max(seen) <= 4 * reducer.limit
    deleted = "\x00" * 3_000_000 + "end"  # nothing survives until the end: read to it, in doubling prefixes
    seen.clear()
    assert reducer(deleted) == "\x00end" and sum(seen) <= 4 * len(deleted)  # one deleted character stays


def test_a_multi_megabyte_line_costs_what_its_context_costs(minilm_dir, monkeypatch):
    """Whatever the line (CJK, a.a.a., one giant word, whitespace, combining marks), the tokenizer is handed at most
    the reducer's limit, and the first tokens are those of the whole text."""
    encoder = Encoder.from_pretrained(minilm_dir)
    tokenizer = encoder.tokenizer
    seen = []
    real = type(tokenizer.hf).__call__

    def spy(self, texts, *args, **kwargs):
        seen.extend(len(t) for t in (texts if isinstance(texts, list) else [texts]))
        return real(self, texts, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer.hf), "__call__", spy)
    lines = ["中国" * 500_000, "a." * 500_000, "x" * 1_000_000, "слово " + " " * 1_000_000 + "конец",
             "e\u0301" * 500_000, ("word " * 100 + "x" * 10_000) * 100]  # 1 M characters, 3 MB of UTF-8 for CJK
    result = tokenizer(lines)
    assert max(seen) <= tokenizer.reducer.limit
    assert result.truncated.tolist() == [True, True, False, False, False, True]
    for i, line in enumerate(lines):
        short = line[: 4 * tokenizer.reducer.limit]  # long enough to fill the context; cheap to tokenize whole
        if result.truncated[i]:
            expected = real(tokenizer.hf, [short], truncation=True, max_length=256)["input_ids"][0]
            assert result.input_ids[i].tolist() == expected, i
