"""The batch embedding job: corpus files in, one embeddings file or a dataset of shards out, resumable after any
crash, on local disk or object storage, from one process or many.

1. `plan_job` (every process; nothing written, metadata only): inputs, splits, layout, fingerprint. The
   processes meet and compare their plans.
2. `settle` (process 0, under the lock): answer "complete" only for a verified output, refuse what must not be
   replaced, clear what --overwrite replaces, keep the verified parts for --resume. It tells the others.
3. Count (several processes only): the splits whose row count the metadata does not give are counted, dealt
   over the processes; a meeting shares the counts, so every split knows its first row and line. One process
   needs no count pass: it reads its splits in order and learns each count as it goes.
4. Embed: the splits without a verified part, dealt round-robin over the processes; one part per split (the
   next split is read and tokenized while the device embeds this one).
5. The processes meet at the end; process 0 checks that every split has a verified part, then assembles the
   file or publishes the dataset.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import time
from typing import TYPE_CHECKING, Callable

import numpy as np

from berta_jax.errors import BertaJaxError, JobError, NonFiniteError
from berta_jax.loading.folder import ModelFolder
from berta_jax.job import finish
from berta_jax.job.cluster import Cluster
from berta_jax.data.inputs import IdPolicy
from berta_jax.job.lock import holder_run, lock_for
from berta_jax.data.outputs import per_row, shard_bytes
from berta_jax.job.parts import Part, Parts, part_name, sha256
from berta_jax.job.plan import (
    JobOptions,
    Plan,
    check_same_plan,
    input_identity,
    plan_digests,
    plan_job,
)
from berta_jax.job.settle import clear_work, settle, work_record
from berta_jax.data.splits import count_rows, read_split
from berta_jax.models.vectors import check_finite

if (
    TYPE_CHECKING
):  # planning and refusals import no JAX; the encoder is loaded only when there is work
    from berta_jax.runtime.encoder import Encoder

__all__ = ["JobOptions", "JobSummary", "run_job"]


@dataclasses.dataclass
class JobSummary:
    output: str = ""
    process: int = 0
    rows: int = 0  # embedded by this process in this run (tokens: of the same rows)
    tokens: int = 0
    rows_resumed: int = 0  # in parts an earlier run committed
    total_rows: int | None = None
    splits_done: int = 0
    splits_resumed: int = 0
    skipped: int = 0
    truncated: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    already_complete: bool = False
    pending: list[int] = dataclasses.field(
        default_factory=list
    )  # splits left without a part (for a resume)
    fraction: float = 0.0  # of this process's share, by input bytes (an ETA needs no row count)
    output_rows: int = 0
    embed_seconds: float = 0.0  # this process's time embedding, compiles excluded
    device_seconds: float = 0.0  # of which the device was computing (see runtime.RunStats)

    @property
    def device_busy(self) -> float:
        """The fraction of the embedding time the device was computing (below 1: it waited on the host)."""
        return min(self.device_seconds / self.embed_seconds, 1.0) if self.embed_seconds > 0 else 0.0


def run_job(
    encoder: Encoder | Callable[[], Encoder],
    inputs: list,
    output,
    options: JobOptions,
    *,
    model: ModelFolder | None = None,
    resume: bool = False,
    overwrite: bool = False,
    dataset: bool = False,
    truncation_report: str | None = None,
    compute_dtype: str = "float32",
    progress=None,
    stop=None,
    cluster: Cluster | None = None,
) -> JobSummary:
    """Embed every row of `inputs` into `output` (see the module). `encoder` may be a loader called only when
    this process has work (then `model` gives the folder for the up-front checks)."""
    cluster = cluster or Cluster()
    plan = error = None
    try:
        if model is None:
            model = ModelFolder.open(
                encoder.folder,
                pooling=encoder.sentence.pooling,
                max_seq_length=encoder.sentence.max_seq_length,
            )
        plan = plan_job(
            [str(p) for p in inputs],
            str(output),
            options,
            model,
            dataset=dataset,
            report=truncation_report,
            compute_dtype=compute_dtype,
        )
    except (BertaJaxError, OSError) as e:
        error = e
    check_same_plan(cluster.meet(plan_digests(plan) if plan else None, error))
    summary = JobSummary(output=plan.layout.output, process=cluster.index)
    lock = lock_for(plan.layout.lock, os.urandom(8).hex()) if cluster.index == 0 else None
    try:
        outcome = _agree(cluster, lambda: settle(plan, lock, resume=resume, overwrite=overwrite))
        if outcome["status"] == "complete":
            summary.output_rows, summary.already_complete = outcome["rows"], True
            return summary
        start = time.perf_counter()
        try:
            _work(plan, encoder, outcome, cluster, summary, progress, stop)
        finally:
            summary.seconds = time.perf_counter() - start
        return summary
    finally:
        if lock is not None and lock.held:
            if (
                plan.settled
                and not Parts(
                    plan.store, plan.layout.state, plan.layout.state, len(plan.splits)
                ).recorded()
            ):
                clear_work(
                    plan, keep_parts=True
                )  # this run settled and committed nothing: leave no files behind
            lock.release()


def _agree(cluster: Cluster, settle_fn: Callable[[], dict]) -> dict:
    """Process 0 settles; every process gets its answer (or its error)."""
    outcome = error = None
    if cluster.index == 0:
        try:
            outcome = settle_fn()
        except (BertaJaxError, OSError) as e:
            error = e
    return cluster.meet(outcome, error)[0]


def _work(
    plan: Plan, encoder, outcome: dict, cluster: Cluster, summary: JobSummary, progress, stop
) -> None:
    counts = (
        _counts(plan, outcome["counts"], cluster, stop)
        if cluster.count > 1
        else list(outcome["counts"])
    )
    done = set(outcome["done"])
    starts = plan.starts(counts)
    summary.total_rows = None if None in counts else sum(counts)
    summary.rows_resumed, summary.splits_resumed = sum(counts[i] for i in done), len(done)
    mine = [i for i in range(len(plan.splits)) if i not in done][cluster.index :: cluster.count]
    parts = Parts(
        plan.store,
        plan.layout.state,
        plan.layout.output if plan.layout.dataset else plan.layout.state,
        len(plan.splits),
    )
    error = None
    try:
        if mine:
            _embed_splits(
                plan, encoder, parts, outcome["run"], mine, counts, starts, summary, progress, stop
            )
    except (BertaJaxError, OSError) as e:  # told at the end meeting, then raised
        error = e
    cluster.meet(
        {"stopped": summary.interrupted}, error, tolerate_gone=True
    )  # all have committed what they will
    if cluster.index == 0 and not summary.interrupted:
        _finish(plan, parts, counts, starts, summary)


def _counts(plan: Plan, known: list, cluster: Cluster, stop) -> list[int]:
    """Every split's row count: from the settlement, else counted by the process it is dealt to."""
    unknown = [i for i, c in enumerate(known) if c is None]
    counted, error = {}, None
    try:
        for i in unknown[cluster.index :: cluster.count]:
            if stop and stop():
                raise KeyboardInterrupt
            counted[i] = count_rows(
                plan.splits[i], text_field=plan.options.text_field, id_field=plan.options.id_field
            )
    except (BertaJaxError, OSError) as e:
        error = e
    counts = list(known)
    for theirs in cluster.meet(counted, error) if unknown else []:
        for i, c in theirs.items():
            counts[int(i)] = c
    if cluster.index == 0 and unknown:
        plan.store.write(plan.store.join(plan.layout.state, "job.json"), work_record(plan, counts))
    return counts


@dataclasses.dataclass
class _Prepared:
    """One split read and tokenized, ready for the device."""

    split: int
    first_row: int
    rows: list
    good: list[int]  # offsets of the rows to embed (the others are skipped: zero vectors)
    prepared: object
    digest: str
    id_kind: str | None


def _prepare(plan: Plan, encoder, split: int, counts: list, starts, stop=None) -> _Prepared:
    """Read and tokenize one split (its row count, when not known yet, is learnt here); a stop ends the read."""
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
            raise KeyboardInterrupt  # only in the helper thread, whose result nobody waits for after a stop
    count = counts[split] = len(rows) if counts[split] is None else counts[split]
    if len(rows) != count:
        raise JobError(
            f"{plan.splits[split]}: holds {len(rows)} rows now, {count} when the run counted them: the "
            "input changed; rerun with --overwrite"
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
    return _Prepared(split, first_row, rows, good, prepared, h.hexdigest(), ids.kind)


def _embed_splits(
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
) -> None:
    """Embed this process's splits, one part each; the next split is prepared in a helper thread meanwhile."""
    encoder = (
        encoder if hasattr(encoder, "prepare") else encoder()
    )  # loaded only now that there is work
    compiled, busy, start = (
        encoder.compile_stats.wall_seconds,
        encoder.run_stats.device_seconds,
        time.perf_counter(),
    )

    def prepare(k: int):
        return _prepare(plan, encoder, mine[k], counts, starts, stop) if k < len(mine) else None

    weights = _weights(plan)
    share, base = sum(weights[i] for i in mine) or 1, 0.0

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="berta-jax-prepare") as ahead:
        upcoming = ahead.submit(prepare, 0)
        try:
            for k in range(len(mine)):
                work = upcoming.result()
                upcoming = ahead.submit(prepare, k + 1)
                vectors = _embed(
                    plan, encoder, work, summary, progress, stop, (base, weights[work.split], share)
                )
                if vectors is None:
                    summary.interrupted = True
                    return
                _commit(plan, parts, run, work, vectors, summary)
                base += weights[work.split]
                if stop and stop() and k + 1 < len(mine):  # a split without batches polls nothing
                    summary.interrupted = True
                    return
                if progress:
                    progress(summary)
        finally:
            upcoming.cancel()
            summary.embed_seconds += (
                time.perf_counter() - start - (encoder.compile_stats.wall_seconds - compiled)
            )
            summary.device_seconds += encoder.run_stats.device_seconds - busy


def _weights(plan: Plan) -> list[float]:
    """Each split's share of its input's bytes: a byte range its length, a row group or whole file its file's
    size over the file's split count."""
    sizes = {f.url: i["size"] for f, i in zip(plan.inputs, plan.fingerprint["inputs"])}
    per_file = collections.Counter(s.file.url for s in plan.splits)
    return [
        s.end - s.start if s.kind == "bytes" else sizes[s.file.url] / per_file[s.file.url]
        for s in plan.splits
    ]


def _embed(
    plan: Plan,
    encoder,
    work: _Prepared,
    summary: JobSummary,
    progress,
    stop,
    share: tuple[float, float, float],
) -> np.ndarray | None:
    """The split's vectors (zero rows for skipped ones), or None when a stop came first. `share`: (weight done
    before this split, this split's weight, the process's whole share), for the progress fraction."""
    vectors = np.zeros((len(work.rows), plan.dim), np.float32)
    lengths, done, embedded = work.prepared.tokens.lengths, (summary.rows, summary.tokens), 0
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
        embedded += len(offsets)
        summary.fraction = (share[0] + share[1] * embedded / max(len(work.good), 1)) / share[2]
        if progress:
            progress(summary)
        if stop and stop():
            summary.rows, summary.tokens = done  # the split in flight is not committed
            return None
    return vectors


def _commit(
    plan: Plan, parts: Parts, run: str, work: _Prepared, vectors: np.ndarray, summary: JobSummary
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
            f"{plan.layout.lock}: this run no longer holds the lock; it stops here. Parts committed so "
            "far are kept"
        )
    parts.commit(part, data)
    summary.splits_done += 1
    summary.skipped += len(skipped)
    summary.truncated += len(truncated)


def _finish(plan: Plan, parts: Parts, counts: list[int], starts, summary: JobSummary) -> None:
    """Process 0: publish only when every split has a part that verifies; else say which are left."""
    committed, missing = [], []
    for i in range(len(plan.splits)):
        try:
            part = parts.read(i)
        except JobError:
            part = None
        problem = (
            part.problem(i, len(plan.splits), plan.digest, starts(i)[0], counts[i])
            if part
            else "absent"
        )
        if problem is None and (problem := parts.check(part)) is None:
            committed.append(part)
        else:
            missing.append(i)
            if part is not None:  # a record that does not fit its place: embedded again by a resume
                plan.store.delete(parts.record_path(i))
    if missing:
        summary.pending = missing
        return
    for file, before in zip(plan.inputs, plan.fingerprint["inputs"]):
        if input_identity(file) != before:
            raise JobError(
                f"{file.url} changed while it was being embedded; rerun with --overwrite"
            )
    kinds = {p.id_kind: p.split for p in committed if p.id_kind is not None}
    if len(kinds) > 1:
        s, i = kinds["string"], kinds["integer"]
        raise JobError(
            f"ids are strings in {plan.splits[s]} and integers in {plan.splits[i]}; ids of one run must "
            'be of one kind (1 and "1" would collide)'
        )
    manifest = (
        finish.assemble(plan, parts, committed)
        if not plan.layout.dataset
        else finish.publish(plan, committed)
    )
    clear_work(plan, keep_parts=plan.layout.dataset)
    finish.write_report(plan.layout, plan.store, manifest)
    summary.output_rows = manifest["rows"]
