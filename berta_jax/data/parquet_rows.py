"""Parquet inputs: the file opened through its footer, its columns checked against the schema, and
its rows read a row group at a time (the text column, and the id column when there is one).
"""

from __future__ import annotations

from typing import Iterator

from berta_jax.data.files import InputFile, open_input
from berta_jax.data.rows import IdPolicy, Row, checked_row
from berta_jax.errors import InputError


def parquet_file(file: InputFile):
    """The opened file (its footer read: schema, row groups), or an InputError naming it."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(open_input(file))
    except InputError:
        raise
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise InputError(f"{file.url}: not a readable parquet file ({e})") from None


def parquet_rows(
    file: InputFile, column: str, id_column: str | None, on_error: str, ids: IdPolicy
) -> Iterator[Row]:
    """Every row of a Parquet file, numbered from 1, read a row group at a time."""
    parquet = parquet_file(file)
    parquet_columns(file.url, parquet.schema_arrow.names, column, id_column)
    columns = [column] + ([id_column] if id_column else [])
    number = 0
    for group in range(parquet.num_row_groups):
        try:
            table = parquet.read_row_group(group, columns=columns)
        except Exception as e:
            raise InputError(f"{file.url}: row group {group} cannot be read ({e})") from None
        values = table.column(id_column).to_pylist() if id_column else [None] * table.num_rows
        for text, id_ in zip(table.column(column).to_pylist(), values):
            number += 1
            yield checked_row(file.url, number, text, id_, column, on_error, ids, id_column)


def parquet_columns(source: str, names: list[str], column: str, id_column: str | None) -> None:
    """The text (and id) column must be in the file's schema."""
    for name in (column, id_column):
        if name is not None and name not in names:
            raise InputError(f"{source}: no column {name!r} (columns: {', '.join(names)})")
