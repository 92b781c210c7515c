"""Where a job writes: the output and every file beside it, resolved and checked before the first
write.

Single-file output (`OUT.npy`, `OUT.parquet`), one host (or hosts sharing a disk):
    OUT                      the embeddings (rows in input order)
    OUT.manifest.json        completion record: fingerprint, rows, size and sha256 of OUT and its
                             sidecars
    OUT.skipped.jsonl        rows skipped with --on-error skip (file, line, reason); only when
                             there are any
    OUT.truncated.jsonl      rows cut at the context (file, line); only when there are any
    OUT.parts/               work in progress (chunk parts, records, claims); removed on success
    OUT.lock                 held while a run writes OUT; removed when it ends
Dataset output (`DIR/` or --format dataset), any number of hosts, local disk or object storage:
    DIR/part-CCCCC-SS-RRRRRRRR.parquet   shards (row, id, embedding), each written once
    DIR/_manifest.json       written last: every shard with its rows, size and sha256
    DIR/_skipped.jsonl, DIR/_truncated.jsonl, DIR/_state/, DIR/_lock.json   as above

`check_collisions` compares every one of these (and --truncation-report) with every input, the
model folder and each other: a job never writes or deletes a file it was not asked to write.
"""

from __future__ import annotations

import dataclasses
import os

from berta_jax.errors import JobError
from berta_jax.data.inputs import InputFile
from berta_jax.storage.stores import canonical, is_url, store_for

SINGLE_FILE_FORMATS = (".npy", ".parquet")


@dataclasses.dataclass(frozen=True)
class Layout:
    kind: str  # "npy", "parquet" or "dataset"
    output: str
    state: str
    lock: str
    manifest: str
    skipped: str
    truncated: str
    report: str | None = None  # --truncation-report

    @property
    def dataset(self) -> bool:
        return self.kind == "dataset"

    def written(self) -> list[tuple[str, str]]:
        """(what, path) of everything the job may create, replace or delete."""
        rows = [
            ("the output", self.output),
            ("the work folder", self.state),
            ("the lock", self.lock),
            ("the completion record", self.manifest),
            ("the skipped-rows list", self.skipped),
            ("the truncated-rows list", self.truncated),
        ]
        return rows + ([("the truncation report", self.report)] if self.report else [])

    def owns(self, path: str) -> bool:
        """Whether `path` is, or lies inside, a file or folder this job writes."""
        return any(_same_or_inside(path, written) for _, written in self.written())


def layout_for(output: str, *, dataset: bool = False, report: str | None = None) -> Layout:
    """The layout of an output path or URL: a directory (trailing '/' or dataset=True) or a
    .npy/.parquet file. Both locations are taken in their canonical form (`stores.canonical`)."""
    output = canonical(output)
    report = canonical(report) if report is not None else None
    if dataset or output.endswith("/"):
        base = output.rstrip("/") or output
        store = store_for(base)
        return Layout(
            "dataset",
            base,
            store.join(base, "_state"),
            store.join(base, "_lock.json"),
            store.join(base, "_manifest.json"),
            store.join(base, "_skipped.jsonl"),
            store.join(base, "_truncated.jsonl"),
            report,
        )
    suffix = next((s for s in SINGLE_FILE_FORMATS if output.endswith(s)), None)
    if suffix is None:
        raise JobError(
            f"{output}: the output must end in .npy or .parquet (one file), or in / for a dataset "
            "directory of Parquet shards"
        )
    return Layout(
        suffix[1:],
        output,
        output + ".parts",
        output + ".lock",
        output + ".manifest.json",
        output + ".skipped.jsonl",
        output + ".truncated.jsonl",
        report,
    )


def _key(path: str) -> str:
    """A comparable form: the real path for local files (links and '..' resolved), the canonical URL
    otherwise (one scheme per store, `file://` a local path)."""
    path = canonical(path)
    return path.rstrip("/") if is_url(path) else os.path.realpath(path)


def _same_or_inside(a: str, b: str) -> bool:
    """True when `a` is `b` or lies inside it (b a directory)."""
    ka, kb = _key(a), _key(b)
    if ka == kb or ka.startswith(kb.rstrip("/") + "/"):
        return True
    if not is_url(a) and not is_url(b) and os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return False


def check_collisions(
    layout: Layout, inputs: list[InputFile], input_specs: list[str], model: list[str]
) -> None:
    """Refuse, naming both paths, any written path that is an input, holds an input, lies in an
    input directory, is or holds or lies in the model folder or a file behind it (`model`:
    `ModelFolder.protected()`), or is another written path; and a work folder that is a link."""
    written = layout.written()
    for what, path in written:
        for i, file in enumerate(inputs, 1):
            if _same_or_inside(file.url, path):
                raise JobError(
                    f"{what} {path} would overwrite or delete input {i} ({file.url}); choose "
                    "another output path (this holds even with --overwrite)"
                )
        for spec in input_specs:
            if _same_or_inside(path, spec) and store_for(spec).exists(spec) and _is_dir(spec):
                raise JobError(
                    f"{what} {path} is inside the input directory {spec}; a later run would read "
                    "it as input. Choose an output outside it"
                )
        for place in model:
            if _same_or_inside(path, place) or _same_or_inside(place, path):
                raise JobError(
                    f"{what} {path} is inside the model folder {model[0]} or touches a file "
                    f"behind it ({place}); choose an output outside the model folder"
                )
    for i, (what, path) in enumerate(written):
        for other_what, other in written[i + 1 :]:
            if _key(path) == _key(other):
                raise JobError(f"{what} and {other_what} would both be {path}; choose another path")
    folders = [layout.state] + ([layout.output] if layout.dataset else [])
    if layout.report and any(_same_or_inside(layout.report, folder) for folder in folders):
        raise JobError(
            f"the truncation report {layout.report} is inside the output's folder, whose files are "
            "the job's own; choose a path outside it"
        )
    _check_work_folder(layout.state)


def _check_work_folder(state: str) -> None:
    """The work folder is the job's own: it writes and deletes part files inside it, so a symbolic
    link there would send them into whatever folder the link names."""
    if not is_url(state) and os.path.islink(state):
        raise JobError(
            f"the work folder {state} is a symbolic link (to {os.readlink(state)}): the job writes "
            "and deletes its part files inside it, so it must be a folder of its own. Remove the "
            "link (the job creates the folder)"
        )


def _is_dir(spec: str) -> bool:
    try:
        return store_for(spec).info(spec).kind == "directory"
    except (FileNotFoundError, OSError):
        return False
