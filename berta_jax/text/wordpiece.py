"""Bound the cost of tokenizing a text by the context length, without changing its tokens.

A corpus line can be megabytes long (a CJK page, `a.a.a.`, one giant word, a run of spaces). Only
its first `max_seq_length` tokens are kept, so only a bounded prefix matters, but which prefix
depends on the tokenizer. BERT's pipeline first splits the raw text on its added tokens ([CLS],
[SEP], ...: leftmost-longest matches, kept whole), then runs BertNormalizer, BertPreTokenizer and
WordPiece on each piece between them. The reducer does the same split and rewrites only the
pieces, by two rewrites that never change a piece's tokens:

1. each run of whitespace and characters the normalizer deletes anyway (controls with
   `clean_text`, combining marks with `strip_accents`) becomes one space where it holds
   whitespace (the pre-tokenizer drops whitespace), else one deleted character (`neutral`);
2. each word with more than `max_input_chars_per_word + 1` characters that the normalizer keeps
   (WordPiece turns it into one [UNK] token whatever its length) is cut after that many and
   followed by a space.

No rewrite joins two characters that were apart: what it removes it replaces by a space or a
deleted character, neither of which is in any added token, so the rewritten text holds exactly
the added tokens the text held, at the same places. Tokenizers whose added tokens hold such a
character, match normalized text (`normalized: true`, e.g. tokens added by `add_tokens`) or only
whole words (`single_word`) get the text unchanged, as do pipelines other than BERT's (exact; the
cost grows with the text). Afterwards every token spans at most `span` characters, so
`(max_seq_length + 2) * span` characters of the rewritten text hold at least `max_seq_length + 1`
whole tokens, and cutting there changes nothing that is kept, including the "truncated" flag.
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
_CONTROL = r"[\x00\uFFFD]|[^\P{C}\t\n\r]"  # what clean_text deletes
_MARK = r"\p{Mn}"  # what strip_accents deletes (after NFD)


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
        added: tuple[str, ...] = (),
    ):
        self.max_word, self.clean_text, self.strip_accents = max_word, clean_text, strip_accents
        self.cjk, self.added = cjk, tuple(added)
        # a word: max_word + 1 kept characters, a deleted one after each, a space; a token: 2 spaces
        self.span = max(2 * max_word + 4, max(map(len, self.added), default=0) + 2)
        self.limit = (max_seq_length + 2) * self.span
        self.neutral = "\x00" if clean_text else "\u0300" if strip_accents else ""
        self._patterns: tuple[regex.Pattern, ...] | None = None

    @classmethod
    def for_tokenizer(cls, spec: dict, max_seq_length: int) -> Reducer | Unchanged:
        """The reducer for a tokenizer's JSON description (`tokenizer.json`), or `Unchanged` for
        pipelines (or added tokens) whose words the reducer does not model."""
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
        reducer = cls(
            max_seq_length=max_seq_length,
            max_word=int(model.get("max_input_chars_per_word", 100)),
            clean_text=bool(norm.get("clean_text", True)),
            strip_accents=bool(lowercase if strip is None else strip),
            cjk=bool(norm.get("handle_chinese_chars", True)),
            added=tuple(str(t.get("content", "")) for t in spec.get("added_tokens") or []),
        )
        return reducer if reducer.models(spec.get("added_tokens") or []) else Unchanged()

    def models(self, added_tokens: list[dict]) -> bool:
        """Whether the split on these added tokens is the reducer's: raw-text, leftmost-longest
        matches of non-empty contents that hold no whitespace and no deleted character."""
        unsafe = regex.compile(rf"\p{{White_Space}}|{self._deleted() or '(?!)'}")
        return all(
            t.get("content")
            and not t.get("normalized")
            and not t.get("single_word")
            and not unsafe.search(str(t["content"]))
            for t in added_tokens
        )

    def __call__(self, text: str) -> str:
        """The rewritten text's first `limit` characters, from a prefix of the text only: each
        rewrite is local, so a rewritten prefix agrees with the rewritten whole up to its last
        word or added token, which a margin of two spans keeps beyond the cut. The prefix doubles
        until it holds enough (a text of deleted characters is read to its end: the cost stays
        linear)."""
        if len(text) <= self.limit:
            return text
        enough, read = self.limit + 2 * self.span, 2 * self.limit
        while True:
            rewritten = self._rewrite(text[:read])
            if len(rewritten) >= enough or read >= len(text):
                return rewritten[: self.limit]
            read *= 2

    def _rewrite(self, text: str) -> str:
        out, start = [], 0
        for match in self._compiled()[0].finditer(text):
            out += [self._piece(text[start : match.start()]), match.group()]
            start = match.end()
        out.append(self._piece(text[start:]))
        return "".join(out)

    def _piece(self, piece: str) -> str:
        _, space, runs, words, head = self._compiled()
        piece = runs.sub(lambda m: " " if space.search(m.group()) else self.neutral, piece)
        return words.sub(lambda m: m.group()[: head.match(m.group()).end()] + " ", piece)

    def _deleted(self) -> str:
        """A regex for one character the normalizer deletes ('' when it deletes none)."""
        kinds = [_CONTROL] * self.clean_text + [_MARK] * self.strip_accents
        return f"(?:{'|'.join(kinds)})" if kinds else ""

    def _space(self) -> str:
        deleted = self._deleted()
        return rf"(?:(?!{deleted})\p{{White_Space}})" if deleted else r"\p{White_Space}"

    def _compiled(self) -> tuple[regex.Pattern, ...]:
        """The added-token matcher (longest first: leftmost-longest, as the tokenizer matches),
        a space, runs of space or deleted characters, over-long words, and a word's kept head."""
        if self._patterns is None:
            deleted, space = self._deleted(), self._space()
            decomposing = _decomposes_to_boundary() if self.strip_accents else ""
            boundary = (
                rf"\p{{White_Space}}\p{{P}}{_ASCII_PUNCT}{_CJK if self.cjk else ''}{decomposing}"
            )
            kept = rf"(?:{f'(?!{deleted})' if deleted else ''}[^{boundary}])"
            letter = rf"(?:{deleted}?{kept})" if deleted else kept
            contents = sorted(set(self.added), key=len, reverse=True)
            self._patterns = (
                regex.compile("|".join(map(regex.escape, contents)) or "(?!)"),
                regex.compile(space),
                regex.compile(rf"(?:{space}|{deleted})+" if deleted else rf"{space}+"),
                regex.compile(rf"{letter}{{{self.max_word + 2},}}"),
                regex.compile(rf"{letter}{{{self.max_word + 1}}}"),
            )
        return self._patterns


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
