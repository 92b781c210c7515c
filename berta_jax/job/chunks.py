"""Chunks of input rows, and embedding one chunk into committed segments, batch by batch.

A chunk is `chunk_rows` consecutive input rows; its digest (sha256 over every row's file, line, text, id and
error) is recorded with its segments, so a resume notices an input edited in place even when its size and
modification time were restored. A chunk is embedded as the batches of one deterministic plan; a stop
request commits the batches done so far as a segment, and a resume continues the same plan from the next
batch, so the result is bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from berta_jax.errors import JobError, NonFiniteError
from berta_jax.job.inputs import IdPolicy, InputFile, Row, read_rows
from berta_jax.job.state import Segment
from berta_jax.vectors import check_finite

if TYPE_CHECKING:  # the job's planning imports no JAX; the encoder arrives loaded
    from berta_jax.encoder import Encoder, Prepared


@dataclasses.dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # global index of its first row
    rows: list[Row]
    digest: str


def read_chunks(inputs: list[InputFile], *, chunk_rows: int, text_field: str, id_field: str | None,
                on_error: str) -> Iterator[Chunk]:
    """Every chunk of the inputs, in order, streamed (one chunk in memory)."""
    ids = IdPolicy()
    rows = (row for file in inputs for row in read_rows(file, text_field=text_field, id_field=id_field,
                                                        on_error=on_error, ids=ids))
    chunk: list[Row] = []
    index = start = 0
    for row in rows:
        chunk.append(row)
        if len(chunk) == chunk_rows:
            yield Chunk(index, start, chunk, _digest(chunk))
            index, start, chunk = index + 1, start + len(chunk), []
    if chunk:
        yield Chunk(index, start, chunk, _digest(chunk))


def _digest(rows: list[Row]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps([row.source, row.line, row.text, row.id, row.error], ensure_ascii=True).encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclasses.dataclass
class Progress:
    """What this run has done so far (rows and tokens count the same rows: those embedded now)."""

    rows: int = 0
    tokens: int = 0
    rows_resumed: int = 0
    chunks_done: int = 0
    chunks_resumed: int = 0
    skipped: int = 0
    truncated: int = 0


@dataclasses.dataclass
class PendingSegment:
    """The rows of a chunk embedded in this run and not yet committed."""

    offsets: list[int] = dataclasses.field(default_factory=list)
    vectors: list[np.ndarray] = dataclasses.field(default_factory=list)
    tokens: int = 0
    truncated: list[dict] = dataclasses.field(default_factory=list)


def remaining_plan(encoder: Encoder, texts: list[str], good: list[int], covered: set[int], prompt: str,
                   batching: dict) -> tuple[Prepared, list[int], int]:
    """(the plan, the chunk offset of each planned text, first batch to run) for a chunk's uncovered good rows.

    With nothing covered, or the covered rows exactly a prefix of the whole chunk's plan, the whole plan is
    kept and continued (bit-identical results); otherwise the uncovered rows get a plan of their own."""
    prepared = encoder.prepare(texts, prompt=prompt, **batching)
    done: set[int] = set()
    covered_good = {i for i in good if i in covered}
    for b, batch in enumerate(prepared.batches):
        if done == covered_good:
            return prepared, good, b
        done.update(good[t] for t in batch.texts)
    if done == covered_good:
        return prepared, good, len(prepared.batches)
    position = {row: t for t, row in enumerate(good)}
    rest = [i for i in good if i not in covered]
    return encoder.prepare([texts[position[i]] for i in rest], prompt=prompt, **batching), rest, 0


@dataclasses.dataclass
class ChunkPlan:
    """A claimed chunk made ready for the device: its rows still to embed, tokenized and planned into batches."""

    chunk: Chunk
    covered: set[int]  # rows committed by earlier runs
    prepared: Prepared
    offsets: list[int]  # the chunk row of each planned text
    first: int  # first batch to run
    skipped: PendingSegment  # the chunk's unreadable rows not yet covered: all-zero vectors
    truncate_dim: int | None  # the output dimension (None: the model's)


def plan_chunk(encoder: Encoder, chunk: Chunk, covered: set[int], *, prompt: str, batching: dict,
               truncate_dim: int | None = None) -> ChunkPlan:
    """Tokenize and plan the chunk's rows outside `covered` (host work, done ahead while the device runs)."""
    good = [i for i, row in enumerate(chunk.rows) if row.error is None]
    skipped = PendingSegment()
    for i, row in enumerate(chunk.rows):  # skipped rows: all-zero vectors, covered by the first segment
        if row.error is not None and i not in covered:
            skipped.offsets.append(i)
            skipped.vectors.append(np.zeros((1, truncate_dim or encoder.embedding_dim), np.float32))
    texts = [chunk.rows[i].text for i in good]
    prepared, offsets, first = remaining_plan(encoder, texts, good, covered, prompt, batching)
    return ChunkPlan(chunk, covered, prepared, offsets, first, skipped, truncate_dim)


def embed_segments(encoder: Encoder, work: ChunkPlan, *, commit: Callable[[PendingSegment], None],
                   after_batch: Callable[[PendingSegment], bool]) -> None:
    """Embed a planned chunk; `commit` a segment when done or when `after_batch` (called after every batch,
    returns True to stop) asks to stop."""
    chunk, tokens, offsets = work.chunk, work.prepared.tokens, work.offsets
    pending = dataclasses.replace(work.skipped, offsets=list(work.skipped.offsets), vectors=list(work.skipped.vectors))
    for batch, vectors in encoder.run_batches(work.prepared.batches[work.first:]):
        rows = [offsets[t] for t in batch.texts]
        _check(vectors, chunk, rows)
        pending.offsets += rows
        pending.vectors.append(encoder.finish(vectors, truncate_dim=work.truncate_dim))
        pending.tokens += int(tokens.lengths[batch.texts].sum())
        pending.truncated += [{"file": chunk.rows[r].source, "line": chunk.rows[r].line}
                              for r, t in zip(rows, batch.texts) if tokens.truncated[t]]
        if after_batch(pending) and len(pending.offsets) + len(work.covered) < len(chunk.rows):
            break
    if pending.offsets:
        commit(pending)


def _check(vectors: np.ndarray, chunk: Chunk, rows: list[int]) -> None:
    """Never commit NaN: name the rows whose vectors are not finite."""
    try:
        check_finite(vectors, len(vectors))
    except NonFiniteError as e:
        bad = [chunk.rows[rows[i]] for i in e.indices]
        where = ", ".join(f"{r.source}:{r.line}" for r in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise JobError(f"non-finite embeddings for {len(bad)} rows ({where}); the model's weights overflow "
                       "float32 on them. Chunks committed so far are kept") from None


def segment_record(chunk: Chunk, pending: PendingSegment, *, index: int, run: str, data: str, data_bytes: bytes,
                   sha: str) -> Segment:
    rows = chunk.rows
    skipped = [{"file": rows[i].source, "line": rows[i].line, "reason": rows[i].error}
               for i in pending.offsets if rows[i].error is not None]
    return Segment(chunk=chunk.index, segment=index, run=run, chunk_rows=len(rows), rows=tuple(pending.offsets),
                   data=data, size=len(data_bytes), sha256=sha, input_sha256=chunk.digest,
                   ids=tuple(rows[i].id for i in pending.offsets), skipped=tuple(skipped),
                   truncated=tuple(pending.truncated), tokens=pending.tokens)
