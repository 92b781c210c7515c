"""What a job is, known before anything is written or the weights are loaded: its inputs and their
splits, where it writes, and the fingerprint that an output and every part of it are tied to.

Every process of a run plans on its own from the same command; the plans are compared field by field
at the first meeting (`check_same_plan`), so a process started with another model, prompt or option
stops there with the field named, before any work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Callable

from berta_jax.errors import JobError
from berta_jax.loading.folder import ModelFolder
from berta_jax.models.vectors import embedding_dim
from berta_jax.data.inputs import InputFile, check_fields, expand_inputs, first_id_kind
from berta_jax.job.fingerprint import FIELDS
from berta_jax.job.layout import Layout, check_collisions, layout_for
from berta_jax.job.split_size import default_split_bytes, recorded_split_bytes
from berta_jax.data.outputs import PRECISIONS, WHOLE_OUTPUT_PRECISIONS
from berta_jax.data.splits import Split, plan_splits
from berta_jax.storage.stores import store_for

FORMAT_VERSION = 2


@dataclasses.dataclass(frozen=True)
class JobOptions:
    text_field: str = "text"
    id_field: str | None = None
    prompt: str = ""
    precision: str = "float32"
    truncate_dim: int | None = None
    # None: the size an earlier run of the output recorded, else about a minute of the device's work
    split_bytes: int | None = None
    on_error: str = "raise"
    max_batch_tokens: int | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision {self.precision!r} is not supported; choose one of "
                f"{', '.join(PRECISIONS)}"
            )
        for name in ("split_bytes", "truncate_dim", "max_batch_tokens", "batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")


@dataclasses.dataclass
class Plan:
    inputs: list[InputFile]
    splits: list[Split]
    layout: Layout
    options: JobOptions
    fingerprint: dict
    dim: int  # dimensions of the stored vectors before packing (truncate_dim or the hidden size)
    id_kind: str | None = None  # of the run's first id: every split judges its ids by it
    settled: bool = False  # process 0 has settled the output for this run (see settle.settle)
    # the completion record of the single-file output this run replaces: cleared at its finish
    replaces: dict | None = None

    @property
    def store(self):
        return store_for(self.layout.output)

    @property
    def digest(self) -> str:
        return _digest(self.fingerprint)

    def starts(self, counts: list) -> Starts:
        return Starts(self.splits, counts)


class Starts:
    """The first global row and the first line in its file of each split, found walking the splits
    in order over their row counts. A split may be asked for once every split before it has its
    count: all of them after a count pass, or, in one process that reads its splits in order, as
    each one is read."""

    def __init__(self, splits: list[Split], counts: list):
        self.splits, self.counts = splits, counts
        self.next, self.row, self.line, self.file = 0, 0, 1, None
        self.known: dict[int, tuple[int, int]] = {}

    def __call__(self, index: int) -> tuple[int, int]:
        while self.next <= index:
            split = self.splits[self.next]
            if split.file != self.file or (
                split.kind != "row_group" and split.start == 0
            ):  # a file's first split
                self.file, self.line = split.file, 1
            self.known[self.next] = (
                self.row,
                split.first_line if split.kind == "row_group" else self.line,
            )
            if self.next == index:
                break  # its own count may not be known yet
            self.row, self.line = (
                self.row + self.counts[self.next],
                self.line + self.counts[self.next],
            )
            self.next += 1
        return self.known[index]


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def input_identity(file: InputFile) -> dict:
    info = store_for(file.url).info(file.url)
    return {"url": file.url, "size": info.size, "version": info.version}


def plan_job(
    input_specs: list[str],
    output: str,
    options: JobOptions,
    model: ModelFolder,
    *,
    dataset: bool = False,
    report: str | None = None,
    compute_dtype: str = "float32",
    platform: Callable[[], str] = lambda: "cpu",
    overwrite: bool = False,
) -> Plan:
    """Everything about a job known without writing anything or loading the weights (the split
    size: see `_with_split_size`; `platform()` names the device kind)."""
    hidden = model.config.hidden_size
    if options.truncate_dim is not None and options.truncate_dim > hidden:
        raise JobError(
            f"--truncate-dim {options.truncate_dim} exceeds the model's {hidden} dimensions"
        )
    layout = layout_for(output, dataset=dataset, report=report)
    if layout.dataset and options.precision in WHOLE_OUTPUT_PRECISIONS:
        raise JobError(
            f"--precision {options.precision} needs ranges over the whole output, which a dataset "
            "written shard by shard cannot have; use float32, float16, binary or ubinary, or a "
            ".npy/.parquet output"
        )
    store = store_for(layout.output)
    if (
        not layout.dataset
        and store.exists(layout.output)
        and store.info(layout.output).kind == "directory"
    ):
        raise JobError(
            f"{layout.output} is a directory; give a file name ending in .npy or .parquet, or end "
            "the output with / for a dataset directory"
        )
    inputs = expand_inputs(input_specs, own=layout.owns)
    check_collisions(layout, inputs, input_specs, model.protected())
    for file in inputs:
        check_fields(file, options.text_field, options.id_field)
    options = _with_split_size(options, layout, model, platform, overwrite)
    splits = plan_splits(inputs, split_bytes=options.split_bytes)
    fingerprint = _fingerprint(inputs, splits, layout, options, model, compute_dtype)
    dim = embedding_dim(hidden, model.sentence.truncate_dim, options.truncate_dim)
    id_kind = first_id_kind(inputs, options.id_field)
    return Plan(inputs, splits, layout, options, fingerprint, dim, id_kind)


def _with_split_size(options: JobOptions, layout: Layout, model, platform, overwrite: bool):
    """`options` with a split size: its own, the earlier run's (kept unless `overwrite`), or the
    device's default."""
    if options.split_bytes is not None:
        return options
    recorded = None if overwrite else recorded_split_bytes(layout)
    size = recorded or default_split_bytes(platform(), model.config)
    return dataclasses.replace(options, split_bytes=size)


def _fingerprint(
    inputs: list[InputFile],
    splits: list[Split],
    layout: Layout,
    options: JobOptions,
    model: ModelFolder,
    compute_dtype: str,
) -> dict:
    """What an output and every part of it are tied to: the inputs as they are now, the model, the
    prompt, the options and the splits."""
    # the prompt itself is its own field
    sentence = {
        f.name: getattr(model.sentence, f.name)
        for f in dataclasses.fields(model.sentence)
        if f.name != "prompts"
    }
    options_record = {**dataclasses.asdict(options), "kind": layout.kind}
    options_record.pop("prompt")
    return {
        "version": FORMAT_VERSION,
        "inputs": [input_identity(f) for f in inputs],
        "model": {**model.identity(), "sentence": sentence, "dtype": compute_dtype},
        "prompt": options.prompt,
        "options": options_record,
        "splits": _digest([[inputs.index(s.file), s.kind, s.start, s.end] for s in splits]),
    }


def plan_digests(plan: Plan) -> dict[str, str]:
    """A digest per fingerprint field: what the processes of a run compare."""
    return {k: _digest(plan.fingerprint.get(k)) for k in FIELDS}


def check_same_plan(plans: list[dict]) -> None:
    """Stop, naming the fields, unless every process planned the same job (`plans`: each one's
    `plan_digests`)."""
    for process, theirs in enumerate(plans):
        differ = [FIELDS[k] for k in FIELDS if theirs.get(k) != plans[0].get(k)]
        if differ:
            raise JobError(
                f"process {process} planned another job than process 0 ({', '.join(differ)} "
                "differ); start every process with the same command"
            )
