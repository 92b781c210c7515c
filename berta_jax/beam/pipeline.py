"""Corpus files in, a Parquet dataset out, as a Beam pipeline: `berta-jax beam IN... -o OUT --model
M -- OPTIONS`.

The plan is made on the launcher from metadata only (`plan_splits`: file sizes, Parquet footers).
Workers count each split's rows (newlines of a byte range; nothing for a row group), read each split
with its rows' global numbers, embed through `RunInference(KeyedModelHandler(BertaModelHandler))`
and write Parquet shards with the columns of `berta-jax encode`'s dataset output (`row`, `id`,
`embedding`) through Beam's file sink, which writes to temporary files and renames them into place
when the write is finalised: a retried bundle leaves no second copy. With `on_error="skip"` a bad
row is a zero row, and `_skipped-*.jsonl` says why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from berta_jax.beam.handler import BertaModelHandler
from berta_jax.errors import JobError
from berta_jax.data.inputs import check_fields, expand_inputs, first_id_kind
from berta_jax.data.rows import IdPolicy
from berta_jax.job.layout import check_collisions, layout_for
from berta_jax.data.outputs import parquet_schema, parquet_table
from berta_jax.data.splits import DEFAULT_SPLIT_BYTES, Split, count_rows, plan_splits, read_split
from berta_jax.storage.stores import canonical, store_for

TABLE_ROWS = 4096  # rows per Parquet write (a row group of the shard)


class EmbedFiles(beam.PTransform):
    """PBegin -> {"embeddings": (row, id, float32 [dim]), "skipped": skipped-row records}, one per
    input row."""

    def __init__(
        self,
        splits: list[Split],
        handler: BertaModelHandler,
        *,
        dim: int,
        text_field: str = "text",
        id_field: str | None = None,
        on_error: str = "raise",
        id_kind: str | None = None,
    ):
        super().__init__()
        self.splits, self.handler, self.dim = splits, handler, dim
        self.fields = {"text_field": text_field, "id_field": id_field}
        # the run's one kind of id (its first id's), planned on the launcher: every split is
        # judged by it, not by its own first id
        self.on_error, self.id_kind = on_error, id_kind

    def expand(self, pbegin):
        splits = pbegin | "Splits" >> beam.Create(self.splits) | "SpreadSplits" >> beam.Reshuffle()
        counts = splits | "CountRows" >> beam.Map(
            lambda s, f: (s.index, count_rows(s, **f)), self.fields
        )
        starts = (
            counts
            | "AllCounts" >> beam.combiners.ToList()
            | "RowStarts" >> beam.Map(row_starts, self.splits)
        )
        rows = splits | "ReadRows" >> beam.FlatMap(
            _numbered_rows,
            beam.pvalue.AsSingleton(starts),
            self.fields,
            self.on_error,
            self.id_kind,
        )
        routed = rows | "Route" >> beam.Partition(lambda row, _: int(row[3] is not None), 2)
        embedded = (
            routed[0]
            | "KeyTexts" >> beam.Map(lambda r: ((r[0], r[1]), r[2]))
            | "Embed" >> RunInference(KeyedModelHandler(self.handler))
            | "Unkey" >> beam.MapTuple(lambda key, result: (key[0], key[1], result.inference))
        )
        zeros = routed[1] | "ZeroRows" >> beam.Map(
            lambda r, dim: (r[0], r[1], np.zeros(dim, np.float32)), self.dim
        )
        skipped = routed[1] | "SkipRecords" >> beam.Map(
            lambda r: {"row": r[0], "id": r[1], "error": r[3]}
        )
        return {"embeddings": (embedded, zeros) | "AllRows" >> beam.Flatten(), "skipped": skipped}


def row_starts(counts: list[tuple[int, int]], plan: list[Split]) -> dict[int, tuple[int, int]]:
    """Split index -> (global row of its first row, 1-based line of that row in its file), from
    every split's row count, in one pass over the plan."""
    rows = dict(counts)
    starts, before, line, file = {}, 0, 1, None
    for split in plan:
        line = 1 if split.file != file else line
        starts[split.index] = (before, split.first_line or line)
        before, line, file = (
            before + rows[split.index],
            (split.first_line or line) + rows[split.index],
            split.file,
        )
    return starts


def _numbered_rows(
    split: Split,
    starts: dict[int, tuple[int, int]],
    fields: dict,
    on_error: str,
    id_kind: str | None = None,
) -> Iterator[tuple]:
    """(global row, id, text or None, error or None) for every row of `split`; ids of another kind
    than `id_kind` are bad rows."""
    before, first_line = starts[split.index]
    rows = read_split(
        split, first_line=first_line, on_error=on_error, ids=IdPolicy(id_kind), **fields
    )
    for offset, row in enumerate(rows):
        error = None if row.error is None else f"{row.source}:{row.line}: {row.error}"
        yield before + offset, row.id, row.text, error


def _tables(rows: list[tuple], schema):
    rows = sorted(rows, key=lambda r: r[0])
    dim = schema.field("embedding").type.list_size
    vectors = (
        np.stack([r[2] for r in rows]).astype(np.float32)
        if rows
        else np.zeros((0, dim), np.float32)
    )
    return parquet_table(
        np.array([r[0] for r in rows], np.int64), [r[1] for r in rows], vectors, schema
    )


def build_pipeline(
    pipeline: beam.Pipeline,
    inputs: list[str],
    output: str,
    handler: BertaModelHandler,
    *,
    dim: int,
    text_field: str = "text",
    id_field: str | None = None,
    on_error: str = "raise",
    split_bytes: int = DEFAULT_SPLIT_BYTES,
    model_folder: Path | None = None,
) -> None:
    """Add the read -> embed -> write steps for `inputs` to `pipeline`, writing the dataset folder
    `output`; refused before any work when `output` would hold, sit among or overwrite the inputs or
    `model_folder` (the same rule as `berta-jax encode`). Locations are compared in their canonical
    form (`stores.canonical`)."""
    output = canonical(output)
    files = expand_inputs(inputs)
    for file in files:
        check_fields(file, text_field, id_field)
    if model_folder is not None:
        check_collisions(layout_for(output, dataset=True), files, inputs, [str(model_folder)])
    check_output(output)
    splits = plan_splits(files, split_bytes=split_bytes)
    result = pipeline | "EmbedFiles" >> EmbedFiles(
        splits,
        handler,
        dim=dim,
        text_field=text_field,
        id_field=id_field,
        on_error=on_error,
        id_kind=first_id_kind(files, id_field),
    )
    _write(result, output, dim, on_error)


def _write(result: dict, output: str, dim: int, on_error: str) -> None:
    """The embeddings as Parquet shards of `output` (and, with skip, the skipped rows' list)."""
    store = store_for(output)
    schema = parquet_schema(np.dtype(np.float32), dim)
    (
        result["embeddings"]
        | "Batch" >> beam.BatchElements(min_batch_size=TABLE_ROWS, max_batch_size=TABLE_ROWS)
        | "ToTables" >> beam.Map(_tables, schema)
        | "WriteParquet"
        >> beam.io.WriteToParquetBatched(
            store.join(output, "part"),
            schema,
            file_name_suffix=".parquet",
            use_compliant_nested_type=True,
        )
    )
    if on_error == "skip":
        (
            result["skipped"]
            | "SkippedJson" >> beam.Map(lambda r: json.dumps(r, ensure_ascii=True))
            | "WriteSkipped"
            >> beam.io.WriteToText(store.join(output, "_skipped"), file_name_suffix=".jsonl")
        )


def check_output(output: str) -> None:
    """The dataset folder must be new or empty: Beam's sink would mix this run's shards with older
    ones."""
    store = store_for(output)
    if store.exists(output):
        if store.info(output).kind != "directory":
            raise JobError(
                f"{output}: exists and is not a folder; the Beam pipeline writes a dataset folder"
            )
        if store.list(output):
            raise JobError(
                f"{output}: the folder is not empty; write to a new folder (Beam's sink would mix "
                "this run's shards with the files already there)"
            )
