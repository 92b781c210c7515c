"""Bound the cost of tokenizing a text by the context length, without changing its tokens.

A corpus line can be megabytes long (a CJK page, `a.a.a.`, one giant word, a run of spaces). Only
its first `max_seq_length` tokens are kept, so only a bounded prefix matters, but which prefix
depends on the tokenizer. For BERT's pipeline (BertNormalizer, BertPreTokenizer, WordPiece) three
rewrites never change the token sequence, and afterwards every token spans at most
`max_input_chars_per_word + 2` characters:

1. characters the normalizer deletes anyway (controls with `clean_text`, combining marks with
   `strip_accents`) are deleted;
2. each run of whitespace becomes one space (the pre-tokenizer drops whitespace);
3. each word longer than `max_input_chars_per_word` characters (which WordPiece turns into one [UNK]
   token whatever its length) is cut to one character more than that limit.

So `(max_seq_length + 2) * (max_input_chars_per_word + 2)` characters of the rewritten text hold at
least `max_seq_length + 1` whole tokens, and cutting there changes nothing that is kept, including
the "truncated" flag. Other tokenizer pipelines get the text unchanged (exact; cost grows with the
text).
"""

from __future__ import annotations

import functools
import sys
import unicodedata

import regex

# Characters BertNormalizer's handle_chinese_chars surrounds with spaces (each becomes a word of its
# own).
_CJK = (
    r"\u4E00-\u9FFF\u3400-\u4DBF\U00020000-\U0002A6DF\U0002A700-\U0002B73F\U0002B740-\U0002B81F"
    r"\U0002B820-\U0002CEAF\uF900-\uFAFF\U0002F800-\U0002FA1F"
)
_ASCII_PUNCT = regex.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_CONTROL = regex.compile(r"[\x00\uFFFD]|(?![\t\n\r])\p{C}")  # what clean_text deletes
_MARK = regex.compile(r"\p{Mn}")  # what strip_accents deletes (after NFD)
_SPACES = regex.compile(r"\p{White_Space}+")


@functools.lru_cache(maxsize=None)
def _decomposes_to_boundary() -> str:
    """Characters whose canonical decomposition contains a word boundary (e.g. U+1FEF -> '`'), as a
    regex class body: with strip_accents the normalizer decomposes them, so they must count as
    boundaries too."""
    boundary = regex.compile(rf"[\p{{White_Space}}\p{{P}}{_ASCII_PUNCT}{_CJK}]")
    found = [
        c
        for c in map(chr, range(sys.maxunicode + 1))
        if unicodedata.decomposition(c)
        and not unicodedata.decomposition(c).startswith("<")
        and boundary.search(unicodedata.normalize("NFD", c))
    ]
    return "".join(regex.escape(c) for c in found)


class Reducer:
    """Rewrites a text into a bounded string that tokenizes to the same first tokens (see the
    module)."""

    def __init__(
        self,
        *,
        max_seq_length: int,
        max_word: int,
        clean_text: bool,
        strip_accents: bool,
        cjk: bool,
    ):
        self.limit = (max_seq_length + 2) * (max_word + 2)
        self.max_word, self.clean_text, self.strip_accents = max_word, clean_text, strip_accents
        self.cjk = cjk
        self._long_words: regex.Pattern | None = None

    @classmethod
    def for_tokenizer(cls, spec: dict, max_seq_length: int) -> Reducer | Unchanged:
        """The reducer for a tokenizer's JSON description (`tokenizer.json`), or `Unchanged` for
        pipelines other than BERT's."""
        normalizers = _normalizers(spec.get("normalizer"))
        model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
        bert = [n for n in normalizers if n.get("type") == "BertNormalizer"]
        if (
            model.get("type") != "WordPiece"
            or pre.get("type") != "BertPreTokenizer"
            or len(bert) != 1
            or any(n.get("type") not in ("BertNormalizer", "Lowercase") for n in normalizers)
        ):
            return Unchanged()
        norm = bert[0]
        lowercase = bool(norm.get("lowercase")) or any(
            n.get("type") == "Lowercase" for n in normalizers
        )
        strip = norm.get("strip_accents")
        return cls(
            max_seq_length=max_seq_length,
            max_word=int(model.get("max_input_chars_per_word", 100)),
            clean_text=bool(norm.get("clean_text", True)),
            strip_accents=bool(lowercase if strip is None else strip),
            cjk=bool(norm.get("handle_chinese_chars", True)),
        )

    def __call__(self, text: str) -> str:
        """The rewritten text's first `limit` characters, from a prefix of the text only: each
        rewrite is local, so a rewritten prefix agrees with the rewritten whole up to its last
        word, which a margin of one word keeps beyond the cut. The prefix doubles until it holds
        enough (a text of deleted characters is read to its end: the cost stays linear)."""
        if len(text) <= self.limit:
            return text
        enough, read = self.limit + self.max_word + 2, 2 * self.limit
        while True:
            rewritten = self._rewrite(text[:read])
            if len(rewritten) >= enough or read >= len(text):
                return rewritten[: self.limit]
            read *= 2

    def _rewrite(self, text: str) -> str:
        if self.clean_text:
            text = _CONTROL.sub("", text)
        if self.strip_accents:
            text = _MARK.sub("", text)
        text = _SPACES.sub(" ", text)
        return self._words().sub(lambda m: m.group()[: self.max_word + 1], text)

    def _words(self) -> regex.Pattern:
        if self._long_words is None:
            decomposing = _decomposes_to_boundary() if self.strip_accents else ""
            boundary = (
                rf"\p{{White_Space}}\p{{P}}{_ASCII_PUNCT}{_CJK if self.cjk else ''}{decomposing}"
            )
            self._long_words = regex.compile(rf"[^{boundary}]{{{self.max_word + 2},}}")
        return self._long_words


class Unchanged:
    """The identity, for tokenizer pipelines whose words the reducer does not model."""

    limit = None

    def __call__(self, text: str) -> str:
        return text


def _normalizers(spec: dict | None) -> list[dict]:
    if not spec:
        return []
    if spec.get("type") == "Sequence":
        return [n for s in spec.get("normalizers", []) for n in _normalizers(s)]
    return [spec]
