"""A retrieval set in the BEIR layout: `corpus.jsonl` (`_id`, `title`, `text`), `queries.jsonl`
(`_id`, `text`) and `qrels/test.tsv` (a header `query-id corpus-id score`, then one judgement a
line, tab-separated).

A document is its title and text joined as MTEB joins them: `(title + " " + text).strip()` when it
has a title field (a null title counts as none), else `text.strip()`. A judgement is relevant when
its score is above 0 (as MTEB's pytrec_eval reads qrels; a 0 row is a judged non-relevant
document). Queries with no relevant judgement are left out and counted (queries.jsonl holds every
split's queries, qrels/test.tsv only the test split's), as sentence-transformers and MTEB leave them
out. Every other fault is an error naming file, line and field: a duplicate `_id`, an empty corpus,
a judgement whose query or document is not in its file, no query with a judgement at all.
"""

from __future__ import annotations

import dataclasses
import os

from berta_jax.data.files import InputFile, open_input
from berta_jax.errors import InputError
from berta_jax.evaluate.records import id_field, read_records, text_field

QRELS_HEADER = ("query-id", "corpus-id", "score")


@dataclasses.dataclass(frozen=True)
class RetrievalSet:
    """Queries and documents by id, and each query's relevant documents."""

    queries: dict[str, str]  # qid -> text, only queries with a relevant document, in file order
    corpus: dict[str, str]  # cid -> title and text joined, in file order
    relevant: dict[str, set[str]]  # qid -> relevant cids (at least one each)
    unjudged_queries: int  # queries of queries.jsonl with no relevant judgement, left out


def read_beir(folder: str, split: str = "test") -> RetrievalSet:
    """The corpus, queries and qrels of a BEIR folder (`qrels/{split}.tsv`)."""
    corpus_path = os.path.join(folder, "corpus.jsonl")
    corpus = _read_texts(corpus_path, document=True)
    if not corpus:
        raise InputError(f"{corpus_path}: the corpus holds no documents")
    queries_path = os.path.join(folder, "queries.jsonl")
    queries = _read_texts(queries_path, document=False)
    qrels_path = os.path.join(folder, "qrels", f"{split}.tsv")
    relevant = read_qrels(qrels_path, queries, corpus)
    if not relevant:
        raise InputError(
            f"{qrels_path}: no judgement with a score above 0, so no query can be evaluated"
        )
    kept = {qid: text for qid, text in queries.items() if qid in relevant}
    return RetrievalSet(kept, corpus, relevant, len(queries) - len(kept))


def _read_texts(path: str, document: bool) -> dict[str, str]:
    """id -> text of a corpus or queries file; a duplicate id is an error naming both lines."""
    texts: dict[str, str] = {}
    lines: dict[str, int] = {}
    for line, record in read_records(path, ("_id", "text")):
        id_ = id_field(path, line, record, "_id")
        if id_ in lines:
            raise InputError(
                f"{path}:{line}: '_id' {id_!r} is a duplicate (first on line {lines[id_]}); ids "
                "must be unique"
            )
        text = text_field(path, line, record, "text")
        if document:
            title = record.get("title")
            if title is not None:
                title = text_field(path, line, record, "title")
            text = (title + " " + text).strip() if title is not None else text.strip()
        texts[id_], lines[id_] = text, line
    return texts


def read_qrels(
    path: str, queries: dict[str, str], corpus: dict[str, str]
) -> dict[str, set[str]]:
    """qid -> relevant cids from a qrels tsv; each id checked against its file."""
    relevant: dict[str, set[str]] = {}
    with open_input(InputFile(path, "tsv")) as raw:
        data = raw.read()
    try:
        rows = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not valid UTF-8") from None
    if not rows or tuple(rows[0].removeprefix("\ufeff").split("\t")) != QRELS_HEADER:
        raise InputError(
            f"{path}:1: the header must be {chr(9).join(QRELS_HEADER)!r} (tab-separated)"
        )
    for line, row in enumerate(rows[1:], 2):
        if not row.strip():
            continue
        qid, cid, score = _qrel(path, line, row)
        if qid not in queries:
            raise InputError(f"{path}:{line}: 'query-id' {qid!r} is not in queries.jsonl")
        if cid not in corpus:
            raise InputError(
                f"{path}:{line}: 'corpus-id' {cid!r} is not in corpus.jsonl; add the document or "
                "remove the judgement"
            )
        if score > 0:
            relevant.setdefault(qid, set()).add(cid)
    return relevant


def _qrel(path: str, line: int, row: str) -> tuple[str, str, int]:
    cells = row.split("\t")
    if len(cells) != 3:
        raise InputError(
            f"{path}:{line}: {len(cells)} tab-separated cells; a judgement is "
            "'query-id<TAB>corpus-id<TAB>score'"
        )
    qid, cid, score = (c.strip() for c in cells)
    for name, value in (("query-id", qid), ("corpus-id", cid)):
        if not value:
            raise InputError(f"{path}:{line}: {name!r} is empty")
    try:
        return qid, cid, int(score)
    except ValueError:
        raise InputError(f"{path}:{line}: 'score' is {score!r}, not an integer") from None

