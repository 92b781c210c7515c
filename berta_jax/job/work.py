"""The work folder of an unfinished run: its job record (`job.json`) and the parts a resume
keeps."""

from __future__ import annotations

import json

from berta_jax.errors import JobError
from berta_jax.job.parts import Parts
from berta_jax.job.plan import FORMAT_VERSION, Plan


def work_record(plan: Plan, counts: list) -> bytes:
    """`job.json`: the fingerprint the work folder's parts belong to, and the split row counts known
    so far."""
    return json.dumps(
        {
            "format": "berta-jax-work",
            "version": FORMAT_VERSION,
            "fingerprint": plan.fingerprint,
            "counts": counts,
        },
        sort_keys=True,
    ).encode()


def read_work(plan: Plan) -> dict | None:
    path = plan.store.join(plan.layout.state, "job.json")
    try:
        record = json.loads(plan.store.read(path))
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, ValueError, RecursionError):
        record = None
    if not (isinstance(record, dict) and isinstance(record.get("fingerprint"), dict)):
        raise JobError(
            f"{path}: the work folder's job record is damaged; pass --overwrite to start this "
            "output again"
        )
    return record


def keep_verified(
    plan: Plan, parts: Parts, recorded: list[int], work: dict | None, run: str
) -> dict:
    """The parts a resume keeps: those whose records are this job's, fit their splits (rows, and
    first row where the counts before them are known) and whose files are as recorded; the others
    are deleted and named in "dropped"."""
    # every refusal is behind: the work folder is this run's to tidy if it commits nothing
    plan.settled = True
    counts = (
        work["counts"]
        if work and _valid_counts(work.get("counts"), len(plan.splits))
        else [None] * len(plan.splits)
    )
    counts = [s.rows if s.rows is not None else c for s, c in zip(plan.splits, counts)]
    kept, dropped = {}, []
    for split in recorded:
        try:
            part = parts.read(split)
        except JobError as e:
            part, problem = None, str(e)
        else:
            problem = part.problem(split, len(plan.splits), plan.digest, None, counts[split])
            problem = problem or parts.check(part)
        if problem is None:
            kept[split], counts[split] = part, part.rows
        else:
            dropped.append((split, problem))
    dropped += _misplaced(plan, kept, counts)
    for split, problem in sorted(dropped):  # embedded again; both names are the job's own
        kept.pop(split, None)
        plan.store.delete(parts.record_path(split))
        plan.store.delete(parts.data_path(split))
    plan.store.makedirs(plan.layout.state)
    plan.store.write(plan.store.join(plan.layout.state, "job.json"), work_record(plan, counts))
    notes = [f"{parts.record_path(i)}: {problem}; embedded again" for i, problem in sorted(dropped)]
    return {"status": "go", "run": run, "done": sorted(kept), "counts": counts, "dropped": notes}


def _misplaced(plan: Plan, kept: dict, counts: list) -> list[tuple[int, str]]:
    """The kept parts whose first row is not where the counts of the splits before them put it
    (checked where all those counts are known: a part with an unknown split before it is checked
    when the job finishes)."""
    starts, found = plan.starts(counts), []
    for split in sorted(kept):
        if any(c is None for c in counts[:split]):
            break
        first_row = starts(split)[0]
        if kept[split].first_row != first_row:
            part = kept[split]
            found.append(
                (split, f"it holds rows {part.first_row}+{part.rows}, the split rows "
                 f"{first_row}+{counts[split]}")
            )
    return found


def _valid_counts(counts, n: int) -> bool:
    return (
        isinstance(counts, list)
        and len(counts) == n
        and all(c is None or (type(c) is int and c >= 0) for c in counts)
    )
