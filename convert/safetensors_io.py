"""Strict reading and atomic writing of safetensors files.

Reading checks the file the way the safetensors format promises (header size,
UTF-8 JSON, unique names, known dtypes, contiguous in-bounds spans of exactly
shape x itemsize bytes, nothing after the last tensor) before touching any
tensor data, and then lets the safetensors library confirm it. Each failure is a
`CheckpointError` that names the file and the tensor. Tensors come back as
read-only numpy views of a memory map, in their stored dtype (bfloat16 via
ml_dtypes), so nothing is copied or converted until the caller asks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as _serialize

from berta_jax.errors import CheckpointError
from berta_jax.storage.stores import LocalStore

MAX_HEADER_BYTES = 100_000_000  # the limit the safetensors library enforces
_LFS_MAGIC = b"version https://git-lfs"

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise CheckpointError(f"duplicate tensor name {key!r} in the header")
        seen[key] = value
    return seen


def read_header(path: Path) -> tuple[dict[str, dict], dict[str, str], int]:
    """Parse and check a safetensors header.

    Returns (tensor entries, metadata, byte offset of the data section).
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if (
                prefix.startswith(_LFS_MAGIC[:8])
                and (prefix + f.read(len(_LFS_MAGIC) - 8)) == _LFS_MAGIC
            ):
                raise CheckpointError(
                    f"{path} is a Git LFS pointer, not the weights: run `git lfs pull` in that "
                    "repository or download the file from the hub"
                )
            if len(prefix) < 8:
                raise CheckpointError(
                    f"{path}: truncated: {size} bytes, too short for a safetensors header"
                )
            n = int.from_bytes(prefix, "little")
            if n > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{path}: header claims {n} bytes, over the {MAX_HEADER_BYTES}-byte limit"
                )
            if 8 + n > size:
                raise CheckpointError(
                    f"{path}: truncated: the header needs {8 + n} bytes but the file has {size}"
                )
            raw = f.read(n)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, expected a safetensors file") from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{path}: header is not valid UTF-8 JSON ({e}); the file is corrupt"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object; the file is corrupt")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    _check_layout(path, header, size - data_start)
    return header, metadata, data_start


def _check_layout(path: Path, header: dict, data_bytes: int) -> None:
    """Every entry well formed, and the tensors tile the data section exactly."""
    spans = [_entry_span(path, name, entry) for name, entry in header.items()]
    _check_spans(path, spans, data_bytes)


def _entry_span(path: Path, name: str, entry) -> tuple[int, int, str]:
    """(begin, end, name) of one header entry, checked: dtype, shape and offsets that fit them."""
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{path}: tensor {name!r}: malformed header entry {entry!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise CheckpointError(
            f"{path}: tensor {name!r} has dtype {dtype}, which berta-jax does not read "
            f"(supported: {', '.join(DTYPES)})"
        )
    if not (
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise CheckpointError(f"{path}: tensor {name!r}: invalid shape {shape!r}")
    if len(shape) > 32 or math.prod(d for d in shape if d) * DTYPES[dtype].itemsize >= 2**63:
        # an empty tensor may still carry absurd dimensions that no array library can represent
        raise CheckpointError(
            f"{path}: tensor {name!r}: shape {shape} is too large to represent; the file is corrupt"
        )
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise CheckpointError(f"{path}: tensor {name!r}: invalid data_offsets {offsets!r}")
    expected = math.prod(shape) * DTYPES[dtype].itemsize  # Python ints: no overflow
    if offsets[1] - offsets[0] != expected:
        raise CheckpointError(
            f"{path}: tensor {name!r}: span of {offsets[1] - offsets[0]} bytes does not match "
            f"shape {shape} x {dtype} = {expected} bytes"
        )
    return offsets[0], offsets[1], name


def _check_spans(path: Path, spans: list[tuple[int, int, str]], data_bytes: int) -> None:
    """No overlap, no gap, and the last tensor ends where the file does."""
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            what = (
                "overlaps the previous tensor"
                if begin < end
                else f"leaves a gap of {begin - end} bytes"
            )
            raise CheckpointError(f"{path}: tensor {name!r} {what}; the file is corrupt")
        end = stop
    if end > data_bytes:
        raise CheckpointError(
            f"{path}: truncated: tensors need {end} data bytes but the file holds {data_bytes}; "
            "download the file again"
        )
    if end < data_bytes:
        raise CheckpointError(
            f"{path}: {data_bytes - end} unexpected trailing bytes after the last tensor"
        )


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of a safetensors file (read-only views, stored dtype) and its metadata."""
    path = Path(path)
    header, metadata, data_start = read_header(path)
    try:  # second opinion from the reference implementation
        with safe_open(str(path), framework="numpy"):
            pass
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: rejected by the safetensors library: {e}") from None
    if not header:
        return {}, metadata
    buffer = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = {}
    for name, entry in header.items():
        begin, stop = (data_start + o for o in entry["data_offsets"])
        tensors[name] = buffer[begin:stop].view(DTYPES[entry["dtype"]]).reshape(entry["shape"])
    return tensors, metadata


def write_safetensors(
    path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Write tensors atomically: temporary file in the same folder, fsync, rename."""
    path = Path(path)
    for name, array in tensors.items():
        if np.dtype(array.dtype) not in _DTYPE_NAMES:
            raise CheckpointError(
                f"{path}: tensor {name!r} has dtype {array.dtype}, which safetensors cannot store"
            )
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    LocalStore().write(str(path), _serialize(arrays, metadata=metadata))
