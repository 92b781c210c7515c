"""The batch embedding job: corpus files in, one embeddings file out, resumable after any crash.

Rows stream from the inputs in chunks of `chunk_rows`. Each chunk's embeddings are written to
`OUTPUT.parts/part-NNNNNN.npy` (temporary file, fsync, rename) and then recorded in
`OUTPUT.parts/manifest.json` (the same way), so after a crash or `kill -9` the manifest names exactly the
chunks that are complete. `resume=True` skips them and continues; the final file is assembled from the
parts once all are done and is byte-identical to an uninterrupted run. The manifest holds a fingerprint of
inputs, model, prompt and options; resuming against a change is refused with what changed.
Skipped rows (`on_error="skip"`) keep row alignment: their row is all zeros and the sidecar
`OUTPUT.skipped.jsonl` lists file, line and reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from berta_jax.errors import BertaJaxError, NonFiniteError, TruncationWarning
from berta_jax.inputs import Row, check_input, read_rows
from convert.safetensors_io import atomic_open, atomic_write_bytes

OUTPUT_FORMATS = (".npy", ".parquet")
_STORED = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "uint8": np.uint8,
           "binary": np.int8, "ubinary": np.uint8}
PRECISIONS = tuple(_STORED)


class JobError(BertaJaxError, RuntimeError):
    """The job cannot start or continue (existing output, changed inputs on resume, a held lock...)."""


@dataclasses.dataclass(frozen=True)
class JobOptions:
    text_field: str = "text"
    id_field: str | None = None
    prompt: str = ""
    precision: str = "float32"
    truncate_dim: int | None = None
    chunk_rows: int = 10_000
    on_error: str = "raise"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not supported; choose one of {', '.join(PRECISIONS)}")
        if self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, got {self.chunk_rows}")
        if self.truncate_dim is not None and self.truncate_dim < 1:
            raise ValueError(f"truncate_dim must be positive, got {self.truncate_dim}")


@dataclasses.dataclass
class JobSummary:
    rows: int = 0
    tokens: int = 0  # tokens fed to the model by this run (prompt and special tokens included)
    skipped: int = 0
    truncated: int = 0
    chunks_done: int = 0
    chunks_resumed: int = 0
    seconds: float = 0.0
    output: str = ""
    interrupted: bool = False
    already_complete: bool = False


def _file_identity(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def fingerprint(inputs: list[Path], model_folder: Path, options: JobOptions) -> dict:
    """What the output depends on, component by component (compared on resume)."""
    model_files = sorted(p for p in model_folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    model_hash = hashlib.sha256(
        json.dumps([(str(p.relative_to(model_folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in model_files])
        .encode()
    ).hexdigest()
    return {
        "inputs": [_file_identity(p) for p in inputs],
        "model": {"folder": str(model_folder.resolve()), "files": model_hash},
        "prompt": options.prompt,
        "options": {k: v for k, v in dataclasses.asdict(options).items() if k != "prompt"},
    }


def _postprocess(vectors: np.ndarray, options: JobOptions) -> np.ndarray:
    if options.truncate_dim is not None:
        vectors = vectors[:, : options.truncate_dim]
    if options.precision == "float16":
        return vectors.astype(np.float16)
    # int8 / uint8 need ranges over the whole output: the parts stay float32 and _assemble quantises
    if options.precision in ("binary", "ubinary"):  # sentence-transformers' quantize_embeddings rules
        packed = np.packbits(vectors > 0, axis=-1)
        return (packed.astype(np.int16) - 128).astype(np.int8) if options.precision == "binary" else packed
    return vectors.astype(np.float32)


def _chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Lock:
    """An exclusive flock on a file next to the output: a second run on the same output fails fast, and
    the kernel releases the lock when its process dies (kill -9 included), so --resume is never blocked."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise JobError(f"{self.path} is locked: another run is writing this output") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the lock; the file stays, harmless


def run_job(
    encoder,
    inputs: list[str | Path],
    output: str | Path,
    options: JobOptions,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[JobSummary], None] | None = None,
    process_index: int = 0,
    process_count: int = 1,
    barrier: Callable[[str], None] | None = None,
) -> JobSummary:
    """Embed every row of `inputs` into `output` (.npy or .parquet); see the module docstring.

    With several processes (`jax.distributed`), process p embeds chunks p, p + n, p + 2n, ... into the
    shared parts folder and keeps its own manifest; after `barrier`, process 0 assembles the one output,
    identical to a single-process run.
    """
    inputs = [Path(p) for p in inputs]
    output = Path(output)
    if output.suffix not in OUTPUT_FORMATS:
        raise JobError(f"{output}: the output must end in {' or '.join(OUTPUT_FORMATS)}")
    if output.is_dir():
        raise JobError(f"{output} is a directory; give a file name ending in .npy or .parquet")
    if process_count > 1 and barrier is None:
        raise ValueError("several processes need a barrier (e.g. jax.experimental.multihost_utils.sync_global_devices)")
    barrier = barrier or (lambda _: None)
    for path in inputs:  # before any lock, manifest or work: a typo in a path is a one-line error
        check_input(path)
    if options.truncate_dim is not None and options.truncate_dim > encoder.hidden_size:
        raise JobError(f"--truncate-dim {options.truncate_dim} exceeds the model's {encoder.hidden_size} dimensions")
    parts = output.with_name(output.name + ".parts")
    suffix = "" if process_count == 1 else f"-{process_index}-of-{process_count}"
    manifest_path = parts / f"manifest{suffix}.json"
    complete_path = parts / "complete.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    summary = JobSummary(output=str(output))
    with _Lock(output.with_name(f"{output.name}.lock{suffix}")):
        expected = fingerprint(inputs, Path(encoder.folder), options)
        if process_index == 0:  # the others wait at the barrier, so no writer of this output is running now
            _remove_stale_temporaries(output, parts)
            done = _check_existing(output, parts, complete_path, manifest_path, expected, resume, overwrite)
        barrier("berta-jax-start")
        if process_index != 0:
            done = _read_record(complete_path, expected)
        if done is not None:  # same command again: nothing to do once the output is verified
            if process_index == 0 and not output.exists():
                _assemble(output, parts, done["chunks"], options, encoder.hidden_size)
            summary.rows, summary.chunks_resumed, summary.already_complete = done["rows"], done["chunks"], True
            return summary
        manifest = _read_record(manifest_path, expected) if resume else None
        manifest = manifest or {"fingerprint": expected, "chunks": 0}
        stop = {"now": False}
        # Ctrl-C finishes the current chunk. With several processes a lone stop would leave the others at the
        # barrier, so there Ctrl-C interrupts at once (committed chunks still resume).
        graceful = _main_thread() and process_count == 1
        previous = signal.signal(signal.SIGINT, lambda *_: stop.update(now=True)) if graceful else None
        start = time.perf_counter()
        try:
            rows = (row for path in inputs for row in read_rows(
                path, text_field=options.text_field, id_field=options.id_field, on_error=options.on_error))
            total_chunks = 0
            for index, chunk in enumerate(_chunks(rows, options.chunk_rows)):
                total_chunks = index + 1
                if index % process_count != process_index:
                    continue
                if index // process_count < manifest["chunks"]:
                    summary.chunks_resumed += 1
                    summary.rows += len(chunk)
                    continue
                _embed_chunk(encoder, chunk, index, parts, options, summary)
                manifest["chunks"] = index // process_count + 1
                atomic_write_bytes(manifest_path, json.dumps(manifest, indent=1).encode())
                if progress:
                    progress(summary)
                if stop["now"]:
                    summary.interrupted = True
                    return summary
            barrier("berta-jax-done")
            changed = [p for p, before in zip(inputs, expected["inputs"]) if _file_identity(p) != before]
            if changed:
                raise JobError(f"{changed[0]} changed while it was being embedded; rerun with --overwrite")
            if process_index == 0:
                totals = _assemble(output, parts, total_chunks, options, encoder.hidden_size)
                summary.rows, summary.skipped, summary.truncated = totals
                atomic_write_bytes(complete_path, json.dumps(
                    {"fingerprint": expected, "chunks": total_chunks, "rows": summary.rows}).encode())
            barrier("berta-jax-assembled")
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            summary.seconds = time.perf_counter() - start
        return summary


def _remove_stale_temporaries(output: Path, parts: Path) -> None:
    """Temporary files a killed run left behind (`atomic_open` names them `.NAME.XXXX.tmp`); never final files."""
    stale = [*output.parent.glob(f".{output.name}.*.tmp"), *(parts.glob(".*.tmp") if parts.is_dir() else [])]
    for path in stale:
        path.unlink(missing_ok=True)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _changed(recorded: dict, expected: dict) -> list[str]:
    return [k for k in ("inputs", "model", "prompt", "options") if recorded.get(k) != expected[k]]


def _read_record(path: Path, expected: dict) -> dict | None:
    """A manifest or completion record, if present and written for the same fingerprint."""
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if not _changed(record["fingerprint"], expected) else None


def _check_existing(output: Path, parts: Path, complete_path: Path, manifest_path: Path, expected: dict,
                    resume: bool, overwrite: bool) -> dict | None:
    """Process 0: refuse what must not be overwritten; return the completion record for a no-op rerun."""
    if not overwrite and parts.exists():
        recorded = [json.loads(p.read_text())["fingerprint"] for p in sorted(parts.glob("*.json"))
                    if p.name.startswith(("manifest", "complete"))]
        changed = sorted({k for r in recorded for k in _changed(r, expected)})
        if changed:
            raise JobError(
                f"{output}: an earlier run with different {', '.join(changed)} wrote here; pass --overwrite to "
                "start again"
            )
        done = _read_record(complete_path, expected)
        if done is not None or resume:
            return done
        if recorded:
            raise JobError(f"{output}: an unfinished run is there; pass --resume to continue it or --overwrite")
    if output.exists() and not overwrite:
        raise JobError(f"{output} exists; pass --overwrite to replace it")
    if parts.exists():
        for p in parts.iterdir():
            p.unlink()
    parts.mkdir(parents=True, exist_ok=True)
    return None


def _embed_chunk(encoder, chunk: list[Row], index: int, parts: Path, options: JobOptions, summary: JobSummary) -> None:
    good = [i for i, row in enumerate(chunk) if row.error is None]
    with warnings.catch_warnings():  # the job counts and lists truncated rows itself
        warnings.simplefilter("ignore", TruncationWarning)
        try:
            result = encoder.encode_detailed([chunk[i].text for i in good], prompt=options.prompt)
        except NonFiniteError as e:  # never commit NaN: name the rows, keep what is committed
            rows = [chunk[good[i]] for i in e.indices]
            where = ", ".join(f"{r.source}:{r.line}" for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise JobError(f"non-finite embeddings for {len(rows)} rows ({where}); the model's weights overflow "
                           "float32 on them. Chunks committed so far are kept") from None
    vectors = np.zeros((len(chunk), encoder.hidden_size), np.float32)
    vectors[good] = result.embeddings
    skipped = [{"file": r.source, "line": r.line, "reason": r.error} for r in chunk if r.error is not None]
    truncated = [{"file": chunk[i].source, "line": chunk[i].line} for i, t in zip(good, result.truncated) if t]
    side = {"ids": [row.id for row in chunk], "skipped": skipped, "truncated": truncated}
    atomic_write_bytes(parts / f"rows-{index:06d}.json", json.dumps(side, ensure_ascii=False).encode())
    atomic_write_bytes(parts / f"part-{index:06d}.npy", _npy_bytes(_postprocess(vectors, options)))
    summary.rows += len(chunk)
    summary.tokens += int(result.num_tokens.sum())
    summary.skipped += len(skipped)
    summary.truncated += len(truncated)
    summary.chunks_done += 1


def _write_sidecar(path: Path, records: list[dict]) -> None:
    if records:
        atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
    else:
        path.unlink(missing_ok=True)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _int8_quantiser(arrays: list[np.ndarray], precision: str, output: Path):
    """sentence-transformers' int8/uint8 rule, with ranges (per-dimension min and max) over every row."""
    rows = sum(len(a) for a in arrays)
    if rows == 0:
        return None
    if rows == 1:
        raise JobError(f"{output}: {precision} quantisation needs ranges from more than one embedding")
    low = np.min([a.min(axis=0) for a in arrays if len(a)], axis=0).astype(np.float32)
    high = np.max([a.max(axis=0) for a in arrays if len(a)], axis=0).astype(np.float32)
    steps = (high - low) / 255
    steps = np.where(steps == 0, 1, steps)

    def quantise(part: np.ndarray) -> np.ndarray:
        q = np.clip(np.floor((np.asarray(part, np.float32) - low) / steps), 0, 255)
        return q.astype(np.uint8) if precision == "uint8" else (q - 128).astype(np.int8)

    return quantise


def _assemble(output: Path, parts: Path, chunks: int, options: JobOptions, hidden: int) -> tuple[int, int, int]:
    """Stream the parts into the final file (memory stays at one part), committed atomically; write the
    skipped / truncated sidecars. Returns (rows, skipped, truncated)."""
    arrays = [np.load(parts / f"part-{i:06d}.npy", mmap_mode="r") for i in range(chunks)]
    sides = [json.loads((parts / f"rows-{i:06d}.json").read_text()) for i in range(chunks)]
    skipped = [r for side in sides for r in side["skipped"]]
    truncated = [r for side in sides for r in side["truncated"]]
    _write_sidecar(output.with_name(output.name + ".skipped.jsonl"), skipped)
    _write_sidecar(output.with_name(output.name + ".truncated.jsonl"), truncated)
    width = options.truncate_dim or hidden
    if options.precision in ("binary", "ubinary"):
        width = -(-width // 8)
    dtype = np.dtype(_STORED[options.precision])
    rows = sum(len(a) for a in arrays)
    quantise = _int8_quantiser(arrays, options.precision, output) if options.precision in ("int8", "uint8") else None
    if quantise is not None:
        arrays = map(quantise, arrays)  # one part at a time, as the loops below write them
    if output.suffix == ".npy":
        with atomic_open(output) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                      "fortran_order": False, "shape": (rows, width)})
            for array in arrays:
                f.write(np.ascontiguousarray(array).tobytes())
        return rows, len(skipped), len(truncated)
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("row", pa.int64()), ("id", pa.string()),
                        ("embedding", pa.list_(pa.from_numpy_dtype(dtype), width))])
    with atomic_open(output) as f, pq.ParquetWriter(f, schema) as writer:
        start = 0
        for array, side in zip(arrays, sides):
            ids = side["ids"]
            flat = pa.array(np.ascontiguousarray(array).reshape(-1), type=pa.from_numpy_dtype(dtype))
            writer.write_table(pa.table({
                "row": pa.array(range(start, start + len(array)), pa.int64()),
                "id": pa.array(ids, pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(flat, width),
            }, schema=schema))
            start += len(array)
    return rows, len(skipped), len(truncated)
