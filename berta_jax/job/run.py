"""The batch embedding job: corpus files in, one embeddings file or a dataset of shards out,
resumable after any crash, on local disk or object storage, from one process or many.

1. `plan_job` (every process; nothing written, metadata only): inputs, splits, layout, fingerprint.
   The processes meet and compare their plans.
2. `settle` (process 0, under the lock): answer "complete" only for a verified output, refuse what
   must not be replaced, clear what --overwrite replaces, keep the verified parts for --resume. It
   tells the others.
3. Count (several processes only): the splits whose row count the metadata does not give are
   counted, dealt over the processes; a meeting shares the counts, so every split knows its first
   row and line. One process needs no count pass: it reads its splits in order and learns each count
   as it goes.
4. Embed: the splits without a verified part, dealt round-robin over the processes; one part per
   split (the next split is read and tokenized while the device embeds this one).
5. The processes meet at the end; process 0 checks that every split has a verified part, then
   assembles the file or publishes the dataset.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Callable

from berta_jax.errors import BertaJaxError, JobError
from berta_jax.loading.folder import ModelFolder
from berta_jax.job import finish
from berta_jax.job.cluster import Cluster
from berta_jax.job.embed import embed_splits

# The two steps of a split, handed to `embed_splits` from here at every run, so that they can be
# replaced on this module (the tests time them).
from berta_jax.job.embed import embed_split as _embed, prepare_split as _prepare
from berta_jax.job.lock import lock_for
from berta_jax.job.parts import Parts
from berta_jax.job.plan import (
    JobOptions,
    Plan,
    check_same_plan,
    input_identity,
    plan_digests,
    plan_job,
)
from berta_jax.job.split_size import device_kind
from berta_jax.job.settle import clear_work, settle
from berta_jax.job.work import work_record
from berta_jax.job.summary import JobSummary
from berta_jax.data.splits import count_rows

# planning and refusals import no JAX; the encoder is loaded only when there is work
if TYPE_CHECKING:
    from berta_jax.runtime.encoder import Encoder

__all__ = ["JobOptions", "JobSummary", "run_job"]


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
    platform: Callable[[], str] | None = None,
) -> JobSummary:
    """Embed every row of `inputs` into `output` (see the module). `encoder` may be a loader called
    only when this process has work (then `model` gives the folder for the up-front checks).
    `platform` names the device kind for the default split size (default: see `_platform`), asked
    only when neither `options` nor an earlier run gives the size."""
    cluster = cluster or Cluster()
    plan, error = _plan(
        encoder,
        inputs,
        output,
        options,
        model,
        dataset=dataset,
        report=truncation_report,
        compute_dtype=compute_dtype,
        platform=platform or (lambda: _platform(encoder)),
        overwrite=overwrite,
    )
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
        _release(plan, lock)


def _plan(encoder, inputs: list, output, options: JobOptions, model, **kwargs) -> tuple:
    """(this process's plan, None), or (None, the error that stopped it): the error is told to the
    other processes at the first meeting."""
    try:
        if model is None:
            model = ModelFolder.open(
                encoder.folder,
                pooling=encoder.sentence.pooling,
                max_seq_length=encoder.sentence.max_seq_length,
            )
        return plan_job([str(p) for p in inputs], str(output), options, model, **kwargs), None
    except (BertaJaxError, OSError) as e:
        return None, e


def _platform(encoder) -> str:
    """The kind of device the job embeds on ("cpu", "gpu", "tpu"): the encoder's, or, for a loader,
    judged without starting JAX (see `split_size.device_kind`)."""
    return encoder.devices[0].platform if hasattr(encoder, "devices") else device_kind()


def _release(plan: Plan, lock) -> None:
    """Process 0 lets the lock go; a run that settled and committed nothing leaves no files
    behind."""
    if lock is None or not lock.held:
        return
    state = plan.layout.state
    if plan.settled and not Parts(plan.store, state, state, len(plan.splits)).recorded():
        clear_work(plan, keep_parts=True)
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
    if cluster.index == 0:
        summary.dropped.extend(outcome["dropped"])
    starts = plan.starts(counts)
    summary.total_rows = None if None in counts else sum(counts)
    summary.rows_resumed, summary.splits_resumed = sum(counts[i] for i in done), len(done)
    summary.splits_total, summary.split_bytes = len(plan.splits), plan.options.split_bytes
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
            embed_splits(
                plan,
                encoder,
                parts,
                outcome["run"],
                mine,
                counts,
                starts,
                summary,
                progress,
                stop,
                prepare_split=_prepare,
                embed_split=_embed,
            )
    except (BertaJaxError, OSError) as e:  # told at the end meeting, then raised
        error = e
    # all have committed what they will
    cluster.meet({"stopped": summary.interrupted}, error, tolerate_gone=True)
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


def _finish(plan: Plan, parts: Parts, counts: list[int], starts, summary: JobSummary) -> None:
    """Process 0: publish only when every split has a part that verifies; else say which are
    left."""
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
                summary.dropped.append(f"{parts.record_path(i)}: {problem}; deleted")
    if missing:
        summary.pending = missing
        summary.absent = [i for i in missing if not parts.store.exists(parts.record_path(i))]
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
            f"ids are strings in {plan.splits[s]} and integers in {plan.splits[i]}; ids of one run "
            'must be of one kind (1 and "1" would collide)'
        )
    if plan.replaces is not None:  # the earlier output's record and sidecars go only now
        finish.remove_recorded(plan.layout, plan.store, plan.replaces)
    manifest = (
        finish.assemble(plan, parts, committed)
        if not plan.layout.dataset
        else finish.publish(plan, committed)
    )
    clear_work(plan, keep_parts=plan.layout.dataset)
    finish.write_report(plan.layout, plan.store, manifest)
    summary.output_rows = manifest["rows"]
