"""The end of a job: turning committed segments into the output, and trusting an output only once verified.

- `assemble` (single file): reads every chunk's segments (each checked against its recorded size and
  sha256), writes OUT in one atomic write, then the sidecars, then the completion record.
- `publish` (dataset): the shards are already in place; it checks their sizes, removes this job's own
  shards that no record kept (left by killed attempts), writes the sidecars, and writes `_manifest.json` last.
- `verify_complete`: a completion record is believed only after the files it lists have the recorded size and
  sha256.
- `remove_recorded`: what --overwrite deletes: the files an earlier completion record lists, nothing else.
"""

from __future__ import annotations

import hashlib
import re
from typing import Iterator

import numpy as np

from berta_jax.errors import JobError
from berta_jax.job.layout import Layout
from berta_jax.job.outputs import ChunkRows, HashingWriter, jsonl_bytes, read_npy, write_single_file
from berta_jax.storage import store_for
from berta_jax.job.state import FORMAT_VERSION, Segment, WorkFolder, dump_json, read_json_record, sha256

SHARD = re.compile(r"part-(\d{5})-(\d{2})-([0-9a-f]{8})\.parquet\Z")


def complete_chunks(segments: list[Segment]) -> dict[int, list[Segment]]:
    """chunk -> its segments, for the chunks whose segments cover every row."""
    by_chunk: dict[int, list[Segment]] = {}
    for seg in segments:
        by_chunk.setdefault(seg.chunk, []).append(seg)
    return {c: sorted(s, key=lambda x: x.segment) for c, s in by_chunk.items()
            if len({r for seg in s for r in seg.rows}) == s[0].chunk_rows}


def check_data(work: WorkFolder, seg: Segment, *, content: bool = True) -> str | None:
    """Why a segment's data does not match its record (None when it does)."""
    path = work.data_path(seg.data)
    try:
        if not content:
            size = work.store.info(path).size
            return None if size == seg.size else f"{seg.data} has {size} bytes, its record says {seg.size}"
        data = work.store.read(path)
    except FileNotFoundError:
        return f"{seg.data} is missing"
    if len(data) != seg.size or sha256(data) != seg.sha256:
        return f"{seg.data} does not match its record (size {len(data)} vs {seg.size}, or its sha256)"
    return None


def _chunk_rows(work: WorkFolder, segs: list[Segment], start: int, width: int) -> ChunkRows:
    n = segs[0].chunk_rows
    vectors = np.zeros((n, width), np.float32)
    ids: list = [None] * n
    for seg in segs:
        data = work.store.read(work.data_path(seg.data))
        if len(data) != seg.size or sha256(data) != seg.sha256:
            raise JobError(f"{work.store.url(work.data_path(seg.data))}: changed since it was committed; rerun with "
                           "--resume to embed its rows again")
        part = read_npy(data, seg.data)
        vectors[list(seg.rows)] = part
        for offset, id_ in zip(seg.rows, seg.ids):
            ids[offset] = id_
    return ChunkRows(start, vectors, ids)


def assemble(layout: Layout, work: WorkFolder, chunks: dict[int, list[Segment]], total: int, precision: str,
             width: int, fingerprint: dict) -> dict:
    """Write OUT, the sidecars and the completion record (see the module). Returns the record."""
    store = work.store
    starts = np.cumsum([0] + [chunks[c][0].chunk_rows for c in range(total)]).tolist()

    def rows() -> Iterator[ChunkRows]:
        for c in range(total):
            yield _chunk_rows(work, chunks[c], starts[c], width)

    with store.open_write(layout.output) as f:
        out = HashingWriter(f)
        write_single_file(out, layout.kind, rows, starts[-1], width, precision, layout.output)
    record = {"output": {"name": store.name(layout.output), "size": out.size, "sha256": out.hash.hexdigest()}}
    return _complete(layout, work, chunks, starts[-1], fingerprint, record)


def publish(layout: Layout, work: WorkFolder, chunks: dict[int, list[Segment]], total: int, fingerprint: dict) -> dict:
    """Finish a dataset: verify shard sizes, drop this job's orphan shards, write the sidecars and the manifest."""
    segments = [seg for c in range(total) for seg in chunks[c]]
    problems = [p for seg in segments if (p := check_data(work, seg, content=False))]
    if problems:
        raise JobError(f"{layout.output}: {problems[0]}; rerun with --resume to embed it again")
    runs = {r[:8] for r in work.runs()}
    kept = {seg.data for seg in segments}
    for name in work.store.list(layout.output):
        match = SHARD.match(name)
        if match and match.group(3) in runs and name not in kept:
            work.store.delete(work.data_path(name))
    shards = [{"name": s.data, "chunk": s.chunk, "segment": s.segment, "rows": len(s.rows), "size": s.size,
               "sha256": s.sha256} for s in segments]
    rows = sum(chunks[c][0].chunk_rows for c in range(total))
    return _complete(layout, work, chunks, rows, fingerprint, {"shards": shards})


def _complete(layout: Layout, work: WorkFolder, chunks: dict[int, list[Segment]], rows: int, fingerprint: dict,
              record: dict) -> dict:
    store = work.store
    segments = [seg for segs in chunks.values() for seg in segs]
    sidecars = {}
    for key, path, items in (("skipped", layout.skipped, [r for s in segments for r in s.skipped]),
                             ("truncated", layout.truncated, [r for s in segments for r in s.truncated])):
        if items:
            data = jsonl_bytes(sorted(items, key=lambda r: (str(r["file"]), r["line"])))
            store.write(path, data)
            sidecars[key] = {"name": store.name(path), "rows": len(items), "size": len(data), "sha256": sha256(data)}
    manifest = {"format": "berta-jax-output", "version": FORMAT_VERSION, "kind": layout.kind, "rows": rows,
                "fingerprint": fingerprint, "sidecars": sidecars, **record}
    store.write(layout.manifest, dump_json(manifest))
    write_report(layout, store, manifest)
    return manifest


def write_report(layout: Layout, store, manifest: dict) -> None:
    """--truncation-report: a copy of the truncated-rows list (an empty file when no row was truncated)."""
    if not layout.report:
        return
    folder = layout.output if layout.dataset else store.parent(layout.output)
    info = manifest.get("sidecars", {}).get("truncated")
    data = store.read(store.join(folder, info["name"])) if info else b""
    store_for(layout.report).write(layout.report, data)


def read_manifest(layout: Layout, store) -> dict | None:
    record = read_json_record(store, layout.manifest, "the completion record")
    if record is not None and not (isinstance(record, dict) and record.get("format") == "berta-jax-output"
                                   and isinstance(record.get("fingerprint"), dict)):
        raise JobError(f"{store.url(layout.manifest)}: not a berta-jax completion record (or a damaged one); pass "
                       "--overwrite to embed this output again")
    return record


def recorded_files(layout: Layout, store, manifest: dict) -> list[tuple[str, dict]]:
    """(path, {size, sha256}) of every file a completion record lists."""
    folder = layout.output if layout.dataset else store.parent(layout.output)
    files = [(layout.output, manifest["output"])] if "output" in manifest else []
    files += [(store.join(folder, s["name"]), s) for s in manifest.get("shards", [])]
    files += [(store.join(folder, s["name"]), s) for s in manifest.get("sidecars", {}).values()]
    return files


def verify_complete(layout: Layout, store, manifest: dict) -> str | None:
    """Why the output does not match its completion record (None when every listed file does)."""
    try:
        for path, info in recorded_files(layout, store, manifest):
            try:
                size = store.info(path).size
            except FileNotFoundError:
                return f"{path} is missing"
            if size != info["size"] or _file_sha256(store, path) != info["sha256"]:
                return f"{path} has changed since the run finished (size {size}, recorded {info['size']})"
    except (KeyError, TypeError) as e:
        return f"the completion record lacks a field ({e})"
    return None


def _file_sha256(store, path: str) -> str:
    h = hashlib.sha256()
    with store.open_read(path) as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def remove_recorded(layout: Layout, store, manifest: dict) -> None:
    """Delete the files a completion record lists (but a single output file, which the new run replaces
    atomically, so a failed run leaves it), and the record: what --overwrite clears."""
    for path, _ in recorded_files(layout, store, manifest):
        if path != layout.output:  # a single output file is kept until the new one replaces it atomically
            store.delete(path)
    store.delete(layout.manifest)

