"""Training data: files of rows (Parquet, jsonl, csv; local or in object storage) -> columns.

A dataset is read as sentence-transformers reads one: its input columns in order (anchor, positive,
negatives...), and a column named `label` or `score` is the label (a number per row, or a teacher
vector per row). Every value is checked where it is read, and a problem names the file, the row and
the column. The tables are read with pyarrow (through the project's storage layer, so `gs://` and
`s3://` work as local paths do).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from berta_jax.data.files import InputFile, expand_inputs, open_input
from berta_jax.errors import InputError

LABEL_COLUMNS = ("label", "score")


@dataclasses.dataclass
class TrainSet:
    """One dataset's rows: text columns in order, and the label column if any."""

    name: str
    text_columns: list[str]
    texts: list[list[str]]  # [column][row]
    label_column: str | None
    labels: np.ndarray | None  # [N] numbers or [N, D] vectors, float32
    files: list[tuple[str, int]]  # (file, its first row in the set): for naming rows

    def __len__(self) -> int:
        return len(self.texts[0]) if self.texts else 0

    def where(self, row: int) -> str:
        """`file row k` (1-based, as a reader counts) of the set's row `row`."""
        name, first = next((f, s) for f, s in reversed(self.files) if s <= row)
        return f"{name} row {row - first + 1}"


def _read_columns(file: InputFile) -> dict[str, list]:
    with open_input(file) as raw:
        data = raw.read()
    if file.format.endswith(".gz"):
        data = gzip.decompress(data)
    try:
        if file.format == ".parquet":
            return pq.read_table(io.BytesIO(data)).to_pydict()
        if file.format.startswith(".jsonl"):
            return _jsonl_columns(file.url, data)
        if file.format == ".csv":
            return pa_csv.read_csv(io.BytesIO(data)).to_pydict()
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
        raise InputError(f"{file.url}: cannot be read as {file.format[1:]} ({e})") from None
    raise InputError(
        f"{file.url}: training data is Parquet, jsonl or csv (a .txt file has no columns)"
    )


def _jsonl_columns(url: str, data: bytes) -> dict[str, list]:
    """jsonl -> columns, each row checked as an object with the first row's fields; the row
    numbers of errors are the file's line numbers."""
    columns: dict[str, list] = {}
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{url} row {number}: not JSON ({e})") from None
        if not isinstance(row, dict):
            raise InputError(f"{url} row {number}: a JSON object is expected")
        if not columns:
            columns = {name: [] for name in row}
        if set(row) - set(columns):
            extra = sorted(set(row) - set(columns))
            raise InputError(f"{url} row {number}: fields {extra} are not in the first row")
        for name, values in columns.items():
            values.append(row.get(name))
    return columns


def _pick_columns(table: dict[str, list], file: str, columns: list[str] | None) -> list[str]:
    names = list(table)
    wanted = columns if columns is not None else names
    missing = [c for c in wanted if c not in names]
    if missing:
        raise InputError(
            f"{file}: no column {', '.join(map(repr, missing))}; it has {', '.join(names)}"
        )
    labels = [c for c in wanted if c in LABEL_COLUMNS]
    if len(labels) > 1 or (labels and wanted[-1] != labels[0] and columns is not None):
        raise InputError(
            f"{file}: data.columns {wanted}: the label column ({' or '.join(LABEL_COLUMNS)}) "
            "comes last, once"
        )
    return wanted


def _texts(values: list, file: str, column: str, first: int) -> list[str]:
    for i, value in enumerate(values):
        if not isinstance(value, str):
            what = "empty (null)" if value is None else f"a {type(value).__name__}, not text"
            raise InputError(f"{file} row {first + i + 1}: column {column!r} is {what}")
    return values


def _labels(values: list, file: str, column: str) -> np.ndarray:
    """Numbers -> [n]; lists of numbers (teacher vectors) -> [n, D]; each finite."""
    for i, value in enumerate(values):
        bad = value is None or (isinstance(value, list) and any(v is None for v in value))
        if bad:
            raise InputError(f"{file} row {i + 1}: column {column!r} is empty (null)")
    vectors = bool(values) and isinstance(values[0], list)
    if vectors:
        dims = {len(v) for v in values}
        if len(dims) > 1:
            first = len(values[0])
            row = next(i for i, v in enumerate(values) if len(v) != first)
            raise InputError(
                f"{file} row {row + 1}: column {column!r} has {len(values[row])} dimensions, "
                f"row 1 has {first}"
            )
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(f"{file}: column {column!r} holds values that are not numbers") from None
    bad_rows = np.flatnonzero(~np.isfinite(array.reshape(len(values), -1)).all(axis=1))
    if bad_rows.size:
        raise InputError(
            f"{file} row {bad_rows[0] + 1}: column {column!r} holds NaN or inf "
            f"({bad_rows.size} rows in all)"
        )
    return array


def read_train_set(name: str, specs: list[str], columns: list[str] | None) -> TrainSet:
    """The rows of every file `specs` names (files, globs, directories), in order."""
    files = expand_inputs(specs)
    chosen: list[str] | None = None
    texts: list[list[str]] = []
    labels: list[np.ndarray] = []
    starts: list[tuple[str, int]] = []
    total = 0
    for file in files:
        table = _read_columns(file)
        picked = _pick_columns(table, file.url, columns if columns is not None else chosen)
        if chosen is not None and picked != chosen:
            raise InputError(f"{file.url}: columns {picked} differ from the first file's {chosen}")
        chosen = picked
        text_cols = [c for c in picked if c not in LABEL_COLUMNS]
        texts = texts or [[] for _ in text_cols]
        for column, out in zip(text_cols, texts):
            out += _texts(table[column], file.url, column, 0)
        if len(text_cols) < len(picked):
            labels.append(_labels(table[picked[-1]], file.url, picked[-1]))
        starts.append((file.url, total))
        total += len(table[picked[0]]) if picked else 0
    if not chosen or total == 0:
        raise InputError(f"{', '.join(specs)}: the dataset {name!r} has no rows")
    text_cols = [c for c in chosen if c not in LABEL_COLUMNS]
    if not text_cols:
        raise InputError(f"{files[0].url}: no text column among {chosen}")
    label = chosen[-1] if len(text_cols) < len(chosen) else None
    return TrainSet(
        name, text_cols, texts, label, _stack(labels, files) if labels else None, starts
    )


def _stack(parts: list[np.ndarray], files: list[InputFile]) -> np.ndarray:
    shapes = {p.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise InputError(
            f"{', '.join(f.url for f in files)}: the label column's shape differs between files "
            f"({' vs '.join(str(s) for s in shapes)})"
        )
    return np.concatenate(parts)
