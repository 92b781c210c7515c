"""Records of an evaluation file (jsonl, csv or Parquet, local or in object storage), each with its
file and line, and the checks of their fields: every error names the file, the line and the field.

The corpus readers of `berta_jax.data` stream one text field; an evaluation row has several
(`sentence1`, `sentence2`, `score`; `text`, `label`, `split`; `_id`, `title`, `text`), so this
module reads whole records through the same opening, decoding and line-length rules.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Iterator

from berta_jax.data.files import InputFile, check_input, open_input
from berta_jax.data.inputs import MAX_LINE_BYTES, decode_line
from berta_jax.data.parquet_rows import parquet_file
from berta_jax.errors import InputError
from berta_jax.text.texts import text_problem

RECORD_FORMATS = (".jsonl", ".csv", ".parquet")


def read_records(path: str, fields: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    """(line, record) for every record of `path`: jsonl objects, csv rows under a header, Parquet
    rows (numbered from 1). `fields` must be present: checked on the header or schema (csv,
    Parquet) or on each record (jsonl)."""
    file = InputFile(path, check_input(path))
    if file.format not in RECORD_FORMATS:
        raise InputError(f"{path}: evaluation files are {', '.join(RECORD_FORMATS)}")
    if file.format == ".parquet":
        yield from _parquet_records(file, fields)
    elif file.format == ".csv":
        yield from _csv_records(file, fields)
    else:
        yield from _jsonl_records(file, fields)


def _jsonl_records(file: InputFile, fields: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    with open_input(file) as raw:
        for number, line in enumerate(_raw_lines(raw), 1):
            text = decode_line(file.url, number, line, "raise")
            if not text.strip():
                continue  # a blank line (the last one, often) is no record
            try:
                record = json.loads(text)
            except (json.JSONDecodeError, RecursionError, ValueError) as e:
                raise InputError(f"{file.url}:{number}: not valid JSON ({e})") from None
            if not isinstance(record, dict):
                raise InputError(f"{file.url}:{number}: not a JSON object")
            for name in fields:
                if name not in record:
                    raise InputError(
                        f"{file.url}:{number}: no field {name!r} (fields: "
                        f"{', '.join(map(str, record)) or 'none'})"
                    )
            yield number, record


def _raw_lines(raw) -> Iterator[bytes | None]:
    """Each line without its ending; None for a line over MAX_LINE_BYTES (an error where read)."""
    stream = io.BufferedReader(raw, 1 << 20)
    while line := stream.readline(MAX_LINE_BYTES + 1):
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            yield None
            while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            continue
        yield line.rstrip(b"\n").removesuffix(b"\r").removeprefix(b"\xef\xbb\xbf")


def _csv_records(file: InputFile, fields: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    with open_input(file) as raw:
        lines = (_csv_line(file.url, n, line) for n, line in enumerate(_raw_lines(raw), 1))
        reader = csv.DictReader(lines, strict=True)
        names = reader.fieldnames or []
        for name in fields:
            if name not in names:
                raise InputError(f"{file.url}:1: no column {name!r} (columns: {', '.join(names)})")
        start = reader.line_num + 1
        try:
            for record in reader:
                yield start, record
                start = reader.line_num + 1
        except csv.Error as e:
            raise InputError(f"{file.url}:{start}: not valid CSV ({e})") from None


def _csv_line(source: str, number: int, line: bytes | None) -> str:
    text = decode_line(source, number, line, "raise")
    return text + "\n"


def _parquet_records(file: InputFile, fields: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    parquet = parquet_file(file)
    names = parquet.schema_arrow.names
    for name in fields:
        if name not in names:
            raise InputError(f"{file.url}: no column {name!r} (columns: {', '.join(names)})")
    number = 0
    for group in range(parquet.num_row_groups):
        try:
            table = parquet.read_row_group(group, columns=list(fields))
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise InputError(f"{file.url}: row group {group} cannot be read ({e})") from None
        for record in table.to_pylist():
            number += 1
            yield number, record


def text_field(source: str, line: int, record: dict, name: str) -> str:
    """The record's `name` as a text, or an InputError naming file, line and field."""
    value = record.get(name)
    if value is None:
        raise InputError(f"{source}:{line}: {name!r} is missing or null")
    if problem := text_problem(value):
        raise InputError(f"{source}:{line}: {name!r} {problem}")
    return value


def id_field(source: str, line: int, record: dict, name: str, what: str = "ids") -> str:
    """An id: a non-empty string or an integer (as text)."""
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise InputError(
            f"{source}:{line}: {name!r} is {value!r}; {what} are non-empty strings or integers"
        )
    return str(value)


def number_field(source: str, line: int, record: dict, name: str) -> float:
    """A finite number (csv cells are parsed as one)."""
    value = record.get(name)
    try:
        number = float(value) if not isinstance(value, bool) and value is not None else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise InputError(f"{source}:{line}: {name!r} is {value!r}, not a finite number")
    return number


def label_field(source: str, line: int, record: dict, name: str) -> str:
    """A class label: a non-empty string or an integer, compared as text (a jsonl 1 and a csv "1"
    are one class)."""
    return id_field(source, line, record, name, "labels")
