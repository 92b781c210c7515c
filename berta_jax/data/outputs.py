"""What the job writes: stored precisions, the bytes of parts and shards, and the single-file
assembly.

Precisions follow sentence-transformers' `quantize_embeddings`: float16; int8/uint8 with
per-dimension ranges over the whole output (so only single-file outputs, assembled at the end, can
have them); binary / ubinary as packed sign bits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from typing import Callable, Iterable, Iterator

import numpy as np

from berta_jax.errors import JobError

STORED = {
    "float32": np.float32,
    "float16": np.float16,
    "int8": np.int8,
    "uint8": np.uint8,
    "binary": np.int8,
    "ubinary": np.uint8,
}
PRECISIONS = tuple(STORED)
WHOLE_OUTPUT_PRECISIONS = ("int8", "uint8")


def stored_width(dim: int, precision: str) -> int:
    return -(-dim // 8) if precision in ("binary", "ubinary") else dim


def per_row(vectors: np.ndarray, precision: str, rows: np.ndarray | None = None) -> np.ndarray:
    """The precisions that need no statistics over the output: float32, float16, binary, ubinary
    (`rows`: the output row of each vector, for errors)."""
    if precision == "float16":
        _check_float16_range(vectors, np.arange(len(vectors)) if rows is None else np.asarray(rows))
        return vectors.astype(np.float16)
    if precision in ("binary", "ubinary"):
        packed = np.packbits(vectors > 0, axis=-1)
        return (packed.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else packed
    return vectors.astype(np.float32)


def _check_float16_range(vectors: np.ndarray, rows: np.ndarray) -> None:
    """float16 holds values up to 65504; beyond it a value would be stored as inf, which is
    refused."""
    largest = np.abs(vectors).max(axis=1) if len(vectors) else np.zeros(0)
    over = np.flatnonzero(largest > np.finfo(np.float16).max)
    if len(over):
        named = [int(rows[i]) for i in over[:10]]
        raise JobError(
            f"rows {named}{' ...' if len(over) > 10 else ''} have embedding values beyond "
            f"float16's range (largest |value| {float(largest[over].max()):.4g} > 65504), which "
            "would be stored as inf; use --precision float32, or normalised embeddings"
        )


def int8_quantiser(
    parts: Iterable[np.ndarray], precision: str, output: str
) -> Callable[[np.ndarray], np.ndarray]:
    """sentence-transformers' int8/uint8 rule, with per-dimension ranges over every row of
    `parts`."""
    low = high = None
    rows = 0
    for part in parts:
        if len(part):
            rows += len(part)
            low = part.min(axis=0) if low is None else np.minimum(low, part.min(axis=0))
            high = part.max(axis=0) if high is None else np.maximum(high, part.max(axis=0))
    if rows == 1:
        raise JobError(
            f"{output}: {precision} quantisation needs ranges from more than one embedding"
        )
    if rows == 0:
        return lambda part: part.astype(STORED[precision])
    low, high = low.astype(np.float32), high.astype(np.float32)
    steps = (high - low) / 255
    steps = np.where(steps == 0, 1, steps)

    def quantise(part: np.ndarray) -> np.ndarray:
        q = np.clip(np.floor((np.asarray(part, np.float32) - low) / steps), 0, 255)
        return q.astype(np.uint8) if precision == "uint8" else (q - 128).astype(np.int8)

    return quantise


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def read_npy(data: bytes, source: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise JobError(f"{source}: not a readable part ({e})") from None


def parquet_schema(dtype: np.dtype, width: int):
    import pyarrow as pa

    return pa.schema(
        [
            ("row", pa.int64()),
            ("id", pa.string()),
            ("embedding", pa.list_(pa.from_numpy_dtype(dtype), width)),
        ]
    )


def parquet_table(rows: np.ndarray, ids: list, vectors: np.ndarray, schema):
    import pyarrow as pa

    width = schema.field("embedding").type.list_size
    flat = pa.array(
        np.ascontiguousarray(vectors).reshape(-1), type=schema.field("embedding").type.value_type
    )
    return pa.table(
        {
            "row": pa.array(rows, pa.int64()),
            "id": pa.array(ids, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, width),
        },
        schema=schema,
    )


def shard_bytes(rows: np.ndarray, ids: list, vectors: np.ndarray) -> bytes:
    """One Parquet shard of a dataset output: row (global index), id, embedding."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(
        parquet_table(rows, ids, vectors, parquet_schema(vectors.dtype, vectors.shape[1])), buffer
    )
    return buffer.getvalue()


class HashingWriter:
    """A binary file wrapper that counts and hashes what goes through it."""

    def __init__(self, f):
        self.f, self.size, self.hash = f, 0, hashlib.sha256()

    def write(self, data) -> int:
        data = bytes(data)
        self.hash.update(data)
        self.size += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.f.flush()

    @property
    def closed(self) -> bool:
        return False


@dataclasses.dataclass(frozen=True)
class ChunkRows:
    """One chunk as the assembly sees it: its first row's index, its vectors and ids in row order,
    and which rows are embeddings (not the zero rows of skipped inputs, which int8/uint8 ranges
    leave out)."""

    start: int
    vectors: np.ndarray
    ids: list
    skipped: tuple = ()  # offsets of skipped rows


def write_single_file(
    f,
    kind: str,
    chunks: Callable[[], Iterator[ChunkRows]],
    rows: int,
    width: int,
    precision: str,
    output: str,
) -> None:
    """Stream every chunk (a fresh iterator per pass) into one .npy or .parquet file, in row
    order."""
    if precision in WHOLE_OUTPUT_PRECISIONS:
        quantise = int8_quantiser(
            (np.delete(c.vectors, list(c.skipped), axis=0) for c in chunks()), precision, output
        )
        convert = lambda v, first_row: quantise(v)  # noqa: E731
    else:
        convert = lambda v, first_row: per_row(  # noqa: E731
            v, precision, np.arange(first_row, first_row + len(v))
        )
    dtype = np.dtype(STORED[precision])
    if kind == "npy":
        np.lib.format.write_array_header_1_0(
            f,
            {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": False,
                "shape": (rows, stored_width(width, precision)),
            },
        )
        for chunk in chunks():
            f.write(np.ascontiguousarray(convert(chunk.vectors, chunk.start)).tobytes())
        return
    import pyarrow.parquet as pq

    schema = parquet_schema(dtype, stored_width(width, precision))
    with pq.ParquetWriter(f, schema) as writer:
        for chunk in chunks():
            index = np.arange(chunk.start, chunk.start + len(chunk.vectors))
            writer.write_table(
                parquet_table(index, chunk.ids, convert(chunk.vectors, chunk.start), schema)
            )


def jsonl_bytes(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in records).encode()
