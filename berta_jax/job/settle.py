"""What process 0 does, under the lock, before any process works: settle what an earlier run left.

A verified completion record for this very job means "complete". Anything else of the job's is
refused, cleared (--overwrite) or, for --resume, kept where it verifies: the parts whose records are
this job's and whose files are as recorded. Only names the job derives itself are ever deleted; a
file in a dataset folder that the job does not name is refused before anything is deleted, even with
--overwrite.
"""

from __future__ import annotations

import errno

from berta_jax.errors import JobError
from berta_jax.job import finish
from berta_jax.job.parts import PART, RECORD, Parts
from berta_jax.job.fingerprint import changed_fields
from berta_jax.job.plan import Plan
from berta_jax.job.work import keep_verified, read_work

_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)
_JOB_FILES = ("_manifest.json", "_skipped.jsonl", "_truncated.jsonl", "_state", "_lock.json")


def settle(plan: Plan, lock, *, resume: bool, overwrite: bool) -> dict:
    """Take the lock and settle the output (see the module): {"status": "complete", "rows"} or
    {"status": "go", "run", "done": splits with a verified part, "counts": each split's rows where
    known}."""
    try:
        lock.acquire()
    except OSError as e:
        # a read-only folder or filesystem: a finished output there is still verified and reported
        rows = _verified_rows(plan) if e.errno in _READ_ONLY else None
        if rows is None:
            raise
        return {"status": "complete", "rows": rows}
    _refuse_foreign(plan)
    _remove_temporaries(plan)
    complete = _settle_manifest(plan, overwrite)
    if complete is not None:
        report = finish.report_bytes(plan.layout, plan.store, complete)
        if not finish.report_holds(plan.layout, report):
            finish.check_report(plan.layout, overwrite)
            finish.write_report(plan.layout, plan.store, complete)
        return {"status": "complete", "rows": complete["rows"]}
    parts = Parts(
        plan.store,
        plan.layout.state,
        plan.layout.output if plan.layout.dataset else plan.layout.state,
        len(plan.splits),
    )
    work, recorded = _settle_work(plan, parts, resume, overwrite)
    finish.check_report(plan.layout, overwrite)
    return keep_verified(plan, parts, recorded, work, lock.run)


def _verified_rows(plan: Plan) -> int | None:
    """The rows of a finished output that verifies for this job, without the lock (None: there is
    none)."""
    manifest = finish.read_manifest(plan.layout, plan.store)
    if (
        manifest is None
        or changed_fields(manifest["fingerprint"], plan.fingerprint)
        or finish.verify_complete(plan.layout, plan.store, manifest) is not None
    ):
        return None
    return manifest["rows"]


def _settle_work(
    plan: Plan, parts: Parts, resume: bool, overwrite: bool
) -> tuple[dict | None, list[int]]:
    """(the work folder's job record, the splits with a part record) that an earlier run of this job
    left, kept for --resume; else cleared (--overwrite) or refused. With no work left, an output
    already there is refused without --overwrite."""
    try:
        work = read_work(plan)
    except JobError:
        if not overwrite:
            raise
        work = None
    recorded = parts.recorded()
    if (
        work is not None
        or recorded
        or plan.store.exists(plan.store.join(plan.layout.state, "job.json"))
    ):
        changed = (
            changed_fields(work["fingerprint"], plan.fingerprint)
            if work
            else ["work (its job record is missing)"]
        )
        if changed and not overwrite:
            raise JobError(
                f"{plan.layout.output}: an earlier run with different {', '.join(changed)} wrote "
                "here; pass --overwrite to start again"
            )
        if not changed and not (resume or overwrite):
            raise JobError(
                f"{plan.layout.output}: an unfinished run is there; pass --resume to continue it "
                "or --overwrite"
            )
        if overwrite:
            clear_work(plan, keep_parts=False)
            work, recorded = None, []
    elif _output_present(plan) and not overwrite:
        raise JobError(
            f"{plan.layout.output} (or its sidecars) exists; pass --overwrite to replace it"
        )
    elif plan.layout.dataset:
        clear_work(plan, keep_parts=False)  # --overwrite of parts no record names
    return work, recorded


def _settle_manifest(plan: Plan, overwrite: bool) -> dict | None:
    """The completion record when it verifies for this job; else cleared (--overwrite) or
    refused."""
    store, layout = plan.store, plan.layout
    try:
        manifest = finish.read_manifest(layout, store)
    except JobError:
        if not overwrite:
            raise
        store.delete(layout.manifest)  # a damaged record lists nothing to trust: only it goes
        return None
    if manifest is None:
        return None
    changed = changed_fields(manifest["fingerprint"], plan.fingerprint)
    problem = None if changed else finish.verify_complete(layout, store, manifest)
    if not changed and problem is None:
        return manifest
    if not (overwrite or _replacing(plan)):
        why = f"an earlier run with different {', '.join(changed)} wrote it" if changed else problem
        raise JobError(f"{layout.output}: {why}; pass --overwrite to embed it again")
    if not layout.dataset:  # untouched until this run's own output is ready (see run._finish)
        plan.replaces = manifest
        return None
    try:
        finish.remove_recorded(layout, store, manifest)
    except JobError:
        # it names files that are not the job's: none of them is deleted
        store.delete(layout.manifest)
    return None


def _replacing(plan: Plan) -> bool:
    """Whether the work folder holds this very job's unfinished run (an --overwrite that stopped
    before its finish): its resume goes on replacing the earlier output."""
    try:
        work = read_work(plan)
    except JobError:
        return False
    return work is not None and not changed_fields(work["fingerprint"], plan.fingerprint)


def _output_present(plan: Plan) -> bool:
    store, layout = plan.store, plan.layout
    if layout.dataset:
        return any(PART.match(n) for n in store.list(layout.output))
    return any(store.exists(p) for p in (layout.output, layout.skipped, layout.truncated))


def _refuse_foreign(plan: Plan) -> None:
    """A dataset folder holds only the job's names; anything else is refused before anything is
    deleted."""
    if not plan.layout.dataset:
        return
    foreign = [
        n
        for n in plan.store.list(plan.layout.output)
        if not (
            PART.match(n)
            or n in _JOB_FILES
            or n.startswith("_lock.json.clock-")
            or (n.startswith(".") and n.endswith(".tmp"))
        )
    ]
    if foreign:
        raise JobError(
            f"{plan.layout.output} holds files berta-jax did not write ({', '.join(foreign[:3])}); "
            "choose an empty or new directory for a dataset output"
        )


def _remove_temporaries(plan: Plan) -> None:
    """Temporary files a killed writer of this output left (`.NAME.XXXX.tmp`); never anything
    else."""
    if plan.store.remote:
        return
    for _, path in plan.layout.written():
        folder, name = plan.store.parent(path), plan.store.name(path)
        for entry in plan.store.list(folder):
            if entry.startswith(f".{name}.") and entry.endswith(".tmp"):
                plan.store.delete(plan.store.join(folder, entry))
    if plan.layout.dataset:  # the work folder's own temporaries go with clear_work or are replaced
        for entry in plan.store.list(plan.layout.output):
            if entry.startswith(".part-") and entry.endswith(".tmp"):
                plan.store.delete(plan.store.join(plan.layout.output, entry))


def clear_work(plan: Plan, *, keep_parts: bool) -> None:
    """Delete the work folder's own names (records, job.json, the single-file parts, temporaries)
    and, unless `keep_parts`, a dataset's part files; then the folder itself when empty."""
    store, state = plan.store, plan.layout.state
    for name in store.list(state):
        if (
            RECORD.match(name)
            or PART.match(name)
            or name == "job.json"
            or (name.startswith(".") and name.endswith(".tmp"))
        ):
            store.delete(store.join(state, name))
    if plan.layout.dataset and not keep_parts:
        for name in store.list(plan.layout.output):
            if PART.match(name):
                store.delete(store.join(plan.layout.output, name))
    store.remove_empty_folder(state)
