"""One process's share of the embedding: its splits in order, one part each.

Each split is read and tokenized (`prepare_split`) in a helper thread while the device embeds the
one before it (`embed_split`); its vectors are then committed as the split's part, while this run
still holds the lock. A stop is honoured at a batch boundary: the split in flight is not committed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import time

import numpy as np

from berta_jax.data.inputs import IdPolicy
from berta_jax.data.outputs import per_row, shard_bytes
from berta_jax.data.splits import read_split
from berta_jax.errors import JobError, NonFiniteError
from berta_jax.job.lock import holder_run
from berta_jax.job.parts import Part, Parts, part_name, sha256
from berta_jax.job.plan import Plan
from berta_jax.job.summary import JobSummary
from berta_jax.models.vectors import check_finite


@dataclasses.dataclass
class Prepared:
    """One split read and tokenized, ready for the device."""

    split: int
    first_row: int
    rows: list
    good: list[int]  # offsets of the rows to embed (the others are skipped: zero vectors)
    prepared: object
    digest: str
    id_kind: str | None


def prepare_split(plan: Plan, encoder, split: int, counts: list, starts, stop=None) -> Prepared:
    """Read and tokenize one split (its row count, when not known yet, is learnt here); a stop ends
    the read."""
    o, (first_row, first_line) = plan.options, starts(split)
    ids, rows = IdPolicy(plan.id_kind), []
    for row in read_split(
        plan.splits[split],
        first_line=first_line,
        text_field=o.text_field,
        id_field=o.id_field,
        on_error=o.on_error,
        ids=ids,
    ):
        rows.append(row)
        if len(rows) % 4096 == 0 and stop and stop():
            # only in the helper thread, whose result nobody waits for after a stop
            raise KeyboardInterrupt
    count = counts[split] = len(rows) if counts[split] is None else counts[split]
    if len(rows) != count:
        raise JobError(
            f"{plan.splits[split]}: holds {len(rows)} rows now, {count} when the run counted "
            "them: the input changed; rerun with --overwrite"
        )
    h = hashlib.sha256()
    for row in rows:
        h.update(
            json.dumps(
                [row.source, row.line, row.text, row.id, row.error], ensure_ascii=True
            ).encode()
            + b"\n"
        )
    good = [i for i, row in enumerate(rows) if row.error is None]
    prepared = encoder.prepare(
        [rows[i].text for i in good],
        prompt=o.prompt,
        max_batch_tokens=o.max_batch_tokens,
        batch_size=o.batch_size,
    )
    return Prepared(split, first_row, rows, good, prepared, h.hexdigest(), ids.kind)


def embed_split(
    plan: Plan,
    encoder,
    work: Prepared,
    summary: JobSummary,
    progress,
    stop,
    share: tuple[float, float, float],
) -> np.ndarray | None:
    """The split's vectors (zero rows for skipped ones), or None when a stop came first. `share`:
    (weight done before this split, this split's weight, the process's whole share), for the
    progress fraction."""
    vectors = np.zeros((len(work.rows), plan.dim), np.float32)
    lengths, done, embedded = work.prepared.tokens.lengths, (summary.rows, summary.tokens), 0
    # progress inside a split by tokens, not texts: batches run longest texts first, and a batch
    # costs its tokens, so a count of texts would lag behind the work done (and inflate the ETA)
    total, summary.split_fraction = max(int(lengths.sum()), 1), 0.0
    for batch, out in encoder.run_batches(work.prepared.batches):
        offsets = [work.good[t] for t in batch.texts]
        try:
            check_finite(out, len(out))
        except NonFiniteError as e:
            where = ", ".join(
                f"{work.rows[offsets[i]].source}:{work.rows[offsets[i]].line}"
                for i in e.indices[:5]
            )
            raise JobError(
                f"non-finite embeddings for {len(e.indices)} rows ({where}); the model's weights "
                "overflow float32 on them. Parts committed so far are kept"
            ) from None
        vectors[offsets] = encoder.finish(out, truncate_dim=plan.options.truncate_dim)
        summary.rows += len(offsets)
        summary.tokens += int(lengths[batch.texts].sum())
        embedded += int(lengths[batch.texts].sum())
        summary.fraction = (share[0] + share[1] * embedded / total) / share[2]
        summary.split_fraction = embedded / total
        if progress:
            progress(summary)
        if stop and stop():
            summary.rows, summary.tokens = done  # the split in flight is not committed
            return None
    return vectors


def _commit(
    plan: Plan, parts: Parts, run: str, work: Prepared, vectors: np.ndarray, summary: JobSummary
) -> None:
    rows, n, first_row = work.rows, len(plan.splits), work.first_row
    global_rows = np.arange(first_row, first_row + len(rows), dtype=np.int64)
    stored = (
        vectors
        if not plan.layout.dataset
        else per_row(vectors, plan.options.precision, global_rows)
    )
    data = shard_bytes(global_rows, [r.id for r in rows], stored) if rows else b""
    truncated = [work.good[t] for t in np.flatnonzero(work.prepared.tokens.truncated)]
    skipped = [
        [i, rows[i].line, rows[i].id, rows[i].error]
        for i, r in enumerate(rows)
        if r.error is not None
    ]
    part = Part(
        work.split,
        part_name(work.split, n),
        first_row,
        len(rows),
        len(data),
        "",
        sha256(data),
        work.digest,
        plan.digest,
        work.id_kind,
        int(work.prepared.tokens.lengths.sum()),
        tuple(skipped),
        tuple([i, rows[i].line, rows[i].id] for i in sorted(truncated)),
    )
    if holder_run(plan.layout.lock) != run:
        raise JobError(
            f"{plan.layout.lock}: this run no longer holds the lock; it stops here. Parts "
            "committed so far are kept"
        )
    parts.commit(part, data)
    summary.splits_done += 1
    summary.skipped += len(skipped)
    summary.truncated += len(truncated)


def _weights(plan: Plan) -> list[float]:
    """Each split's share of its input's bytes: a byte range its length, a row group or whole file
    its file's size over the file's split count."""
    sizes = {f.url: i["size"] for f, i in zip(plan.inputs, plan.fingerprint["inputs"])}
    per_file = collections.Counter(s.file.url for s in plan.splits)
    return [
        s.end - s.start if s.kind == "bytes" else sizes[s.file.url] / per_file[s.file.url]
        for s in plan.splits
    ]


def embed_splits(
    plan: Plan,
    encoder,
    parts: Parts,
    run: str,
    mine: list[int],
    counts: list,
    starts,
    summary: JobSummary,
    progress,
    stop,
    *,
    prepare_split=prepare_split,
    embed_split=embed_split,
) -> None:
    """Embed this process's splits, one part each; the next split is prepared in a helper thread
    meanwhile."""
    encoder = _loaded(encoder, summary)  # only now that there is work
    clock = _Clock(encoder, summary)
    tracked = clock.ticking(progress)

    def prepare(k: int):
        return (
            prepare_split(plan, encoder, mine[k], counts, starts, stop) if k < len(mine) else None
        )

    weights = _weights(plan)
    share, base = sum(weights[i] for i in mine) or 1, 0.0
    ahead = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="berta-jax-prepare")
    with ahead:
        upcoming = ahead.submit(prepare, 0)
        try:
            for k in range(len(mine)):
                work = upcoming.result()
                upcoming = ahead.submit(prepare, k + 1)
                split_share = (base, weights[work.split], share)
                vectors = embed_split(plan, encoder, work, summary, tracked, stop, split_share)
                if vectors is None:
                    summary.interrupted = True
                    return
                _commit(plan, parts, run, work, vectors, summary)
                base += weights[work.split]
                if stop and stop() and k + 1 < len(mine):  # a split without batches polls nothing
                    summary.interrupted = True
                    return
                tracked(summary)
        finally:
            upcoming.cancel()
            clock.tick()


class _Clock:
    """This run's embedding time, compiles excluded, and the device's busy time in it, kept current
    in `summary` (`tick`) at every batch: the progress display and the final line divide by the
    same seconds."""

    def __init__(self, encoder, summary: JobSummary):
        self.encoder, self.summary, self.start = encoder, summary, time.perf_counter()
        self.compiled = encoder.compile_stats.wall_seconds
        self.busy = encoder.run_stats.device_seconds
        self.base = (summary.embed_seconds, summary.device_seconds, summary.compile_seconds)

    def tick(self) -> None:
        s, compiled = self.summary, self.encoder.compile_stats.wall_seconds - self.compiled
        s.embed_seconds = self.base[0] + time.perf_counter() - self.start - compiled
        s.device_seconds = self.base[1] + self.encoder.run_stats.device_seconds - self.busy
        s.compile_seconds = self.base[2] + compiled

    def ticking(self, progress):
        """`progress`, called with the summary's times brought up to date."""

        def tracked(summary: JobSummary) -> None:
            self.tick()
            if progress:
                progress(summary)

        return tracked


def _loaded(encoder, summary: JobSummary):
    """The encoder, loaded now if `encoder` is its loader (the time is start-up, not embedding)."""
    if hasattr(encoder, "prepare"):
        return encoder
    start = time.perf_counter()
    try:
        return encoder()
    finally:
        summary.load_seconds += time.perf_counter() - start
