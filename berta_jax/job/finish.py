"""The end of a job, and trusting an output only once it is verified.

- `assemble` (single file): streams every split's part, in order, into OUT in one atomic write.
- `publish` (dataset): the parts are the shards, already in place.
Both then write the sidecars (skipped and truncated rows, gathered from the records) and, last, the
completion record: every file with its size and version, and for a dataset the split of every shard.
- `verify_complete`: a completion record is believed only when it covers every split once, names
  only the job's own files, and each file still has the size and version recorded (metadata only;
  nothing is read).
- `remove_recorded`: what --overwrite deletes: the files a valid completion record lists, nothing
  else.
"""

from __future__ import annotations

import io
import json
import os
from typing import Iterator

import numpy as np

from berta_jax.errors import JobError
from berta_jax.job.layout import Layout
from berta_jax.data.outputs import ChunkRows, HashingWriter, jsonl_bytes, write_single_file
from berta_jax.job.parts import Part, part_name
from berta_jax.job.plan import FORMAT_VERSION, Plan
from berta_jax.storage.stores import store_for


def _part_rows(plan: Plan, parts, part: Part) -> ChunkRows:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(plan.store.read(parts.data_path(part.split))))
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten(), np.float32).reshape(
        part.rows, plan.dim
    )
    return ChunkRows(
        part.first_row, vectors, table.column("id").to_pylist(), tuple(r[0] for r in part.skipped)
    )


def assemble(plan: Plan, parts, committed: list[Part]) -> dict:
    """Write OUT from the parts, then the sidecars and the completion record; returns the record."""
    store, layout, rows = plan.store, plan.layout, sum(p.rows for p in committed)

    def chunks() -> Iterator[ChunkRows]:
        return (_part_rows(plan, parts, p) for p in committed if p.rows)

    with store.open_write(layout.output) as f:
        out = HashingWriter(f)
        write_single_file(
            out, layout.kind, chunks, rows, plan.dim, plan.options.precision, layout.output
        )
    output = {
        "name": store.name(layout.output),
        "size": out.size,
        "sha256": out.hash.hexdigest(),
        "version": store.info(layout.output).version,
    }
    return _complete(plan, committed, {"output": output})


def publish(plan: Plan, committed: list[Part]) -> dict:
    shards = [
        {
            "name": p.name,
            "split": p.split,
            "rows": p.rows,
            "size": p.size,
            "version": p.version,
            "sha256": p.sha256,
        }
        for p in committed
        if p.rows
    ]
    return _complete(
        plan, committed, {"shards": shards, "empty": [p.split for p in committed if not p.rows]}
    )


def _sidecar_rows(plan: Plan, committed: list[Part], key: str) -> list[dict]:
    urls = {s.index: s.file.url for s in plan.splits}
    entries = []
    for part in committed:
        for offset, line, id_, *reason in getattr(part, key):
            entry = {
                "file": urls[part.split],
                "line": line,
                "row": part.first_row + offset,
                "id": id_,
            }
            entries.append({**entry, "reason": reason[0]} if reason else entry)
    return entries


def _complete(plan: Plan, committed: list[Part], record: dict) -> dict:
    store, layout = plan.store, plan.layout
    sidecars = {}
    for key, path in (("skipped", layout.skipped), ("truncated", layout.truncated)):
        if not (entries := _sidecar_rows(plan, committed, key)):
            store.delete(path)  # an earlier run's list, which this output no longer has
        else:
            store.write(path, jsonl_bytes(entries))
            info = store.info(path)
            sidecars[key] = {
                "name": store.name(path),
                "rows": len(entries),
                "size": info.size,
                "version": info.version,
            }
    manifest = {
        "format": "berta-jax-output",
        "version": FORMAT_VERSION,
        "kind": layout.kind,
        "rows": sum(p.rows for p in committed),
        "splits": len(plan.splits),
        "fingerprint": plan.fingerprint,
        "sidecars": sidecars,
        **record,
    }
    store.write(layout.manifest, json.dumps(manifest, sort_keys=True).encode())
    return manifest


def report_bytes(layout: Layout, store, manifest: dict) -> bytes:
    """What --truncation-report holds: the truncated-rows list (empty when no row was truncated)."""
    return store.read(layout.truncated) if manifest.get("sidecars", {}).get("truncated") else b""


def write_report(layout: Layout, store, manifest: dict) -> None:
    if layout.report:
        store_for(layout.report).write(layout.report, report_bytes(layout, store, manifest))


def report_holds(layout: Layout, data: bytes) -> bool:
    """Whether --truncation-report is already a regular file (an object) holding `data`: a rerun of
    a finished command."""
    report = layout.report
    if not report or _report_kind(report) != "file":
        return False
    with store_for(report).open_read(report) as f:
        return f.read(len(data) + 1) == data


def check_report(layout: Layout, overwrite: bool) -> None:
    """--truncation-report never goes through a link or to a device or folder, nor replaces a file
    or an object without --overwrite; its existence is asked of the store that holds it."""
    report = layout.report
    kind = _report_kind(report) if report else None
    if kind is None:
        return
    if kind != "file":
        raise JobError(
            f"--truncation-report {report} is a link or not a regular file; give a new file's path"
        )
    if not overwrite:
        raise JobError(
            f"--truncation-report {report} exists; pass --overwrite to replace it, or give a new "
            "path"
        )


def _report_kind(report: str) -> str | None:
    """None (nothing there), "file", or "other" (a link, a device, a folder)."""
    store = store_for(report)
    if not store.remote:
        if not os.path.lexists(report):
            return None
        return "file" if os.path.isfile(report) and not os.path.islink(report) else "other"
    if not store.exists(report):
        return None
    return "file" if store.info(report).kind == "file" else "other"


def read_manifest(layout: Layout, store) -> dict | None:
    try:
        record = json.loads(store.read(layout.manifest))
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, ValueError, RecursionError):
        record = None
    if not (
        isinstance(record, dict)
        and record.get("format") == "berta-jax-output"
        and isinstance(record.get("fingerprint"), dict)
    ):
        raise JobError(
            f"{layout.manifest}: not a berta-jax completion record (or a damaged one); pass "
            "--overwrite to embed this output again"
        )
    return record


def recorded_files(layout: Layout, store, manifest: dict) -> list[tuple[str, dict]]:
    """(path, entry) of every file a completion record lists, each checked to be one of the job's
    own names and the shards to cover every split once; a JobError naming the record otherwise
    (nothing is deleted then)."""
    try:
        folder = layout.output if layout.dataset else store.parent(layout.output)
        files = [(layout.output, manifest["output"])] if not layout.dataset else []
        if files and manifest["output"]["name"] != store.name(layout.output):
            raise ValueError(f"output {manifest['output']['name']!r}")
        splits, shards = manifest["splits"], manifest.get("shards", []) if layout.dataset else []
        if layout.dataset and sorted([s["split"] for s in shards] + manifest["empty"]) != list(
            range(splits)
        ):
            raise ValueError("shards that do not cover every split once")
        for shard in shards:
            if shard["name"] != part_name(shard["split"], splits):
                raise ValueError(f"shard {shard['name']!r}")
            files.append((store.join(folder, shard["name"]), shard))
        if sum(s["rows"] for s in shards) != manifest["rows"] and layout.dataset:
            raise ValueError("shard rows that do not add up to its rows")
        own = {"skipped": layout.skipped, "truncated": layout.truncated}
        for key, entry in manifest["sidecars"].items():
            if entry["name"] != store.name(own[key]):
                raise ValueError(f"sidecar {entry['name']!r}")
            files.append((own[key], entry))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise JobError(
            f"{layout.manifest}: the completion record lists {e}, which is not this job's; pass "
            "--overwrite to embed the output again (only files named as berta-jax names them are "
            "removed)"
        ) from None
    return files


def verify_complete(layout: Layout, store, manifest: dict) -> str | None:
    """Why the output does not match its completion record (None when every listed file does)."""
    try:
        files = recorded_files(layout, store, manifest)
    except JobError as e:
        return str(e)
    for path, entry in files:
        try:
            info = store.info(path)
        except FileNotFoundError:
            return f"{path} is missing"
        if (info.size, info.version) != (entry.get("size"), entry.get("version")):
            return (
                f"{path} has changed since the run finished (size {info.size}, recorded "
                f"{entry.get('size')})"
            )
    return None


def remove_recorded(layout: Layout, store, manifest: dict) -> None:
    """Delete the files a completion record lists (but a single output file, which the new run
    replaces atomically, so a failed run leaves it), and the record: what --overwrite clears."""
    for path, _ in recorded_files(layout, store, manifest):
        if path != layout.output:
            store.delete(path)
    store.delete(layout.manifest)
