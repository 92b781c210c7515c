"""One row of a corpus file, and the checks every format's rows go through.

Every row yields a `Row`; a bad row either raises `InputError` (file, line, problem) or, with
`on_error="skip"`, yields a `Row` whose `error` says why, so the caller keeps row numbering and can
report skips.

Ids: strings, or integers written in decimal; one kind per run (mixing `1` and `"1"` could collide),
any other JSON type is a row error.
"""

from __future__ import annotations

import dataclasses

from berta_jax.errors import InputError
from berta_jax.text.texts import surrogate_problem, text_problem


@dataclasses.dataclass(frozen=True)
class Row:
    source: str
    line: int  # 1-based line (txt/jsonl/csv) or row (parquet) in its file
    text: str | None
    id: str | None = None
    error: str | None = None  # set only for skipped rows


class IdPolicy:
    """Ids are strings or integers (written in decimal), one kind per run."""

    def __init__(self, kind: str | None = None):
        # "string" or "integer", once known (the run's first id decides)
        self.kind: str | None = kind

    def __call__(self, value) -> tuple[str | None, str | None]:
        """(id as text, error) for a raw id value."""
        if value is None:
            return None, None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return None, f"id is {type(value).__name__}; ids must be strings or integers"
        if isinstance(value, str) and (problem := surrogate_problem(value)):
            return None, f"the id {problem}"
        kind = "string" if isinstance(value, str) else "integer"
        if self.kind is None:
            self.kind = kind
        elif kind != self.kind:
            return None, (
                f"id is a {kind} but earlier ids are {self.kind}s; ids of one run must be of one "
                'kind (1 and "1" would collide)'
            )
        return str(value), None


def bad_row(source: str, line: int, message: str, on_error: str, id_: str | None = None) -> Row:
    """A row's problem: with `on_error="skip"` the row, its `error` saying why; else an InputError
    naming its file and line."""
    if on_error == "skip":
        return Row(source, line, None, id_, message)
    raise InputError(f"{source}:{line}: {message}")


def checked_row(
    source: str,
    number: int,
    text,
    id_,
    field: str,
    on_error: str,
    ids: IdPolicy,
    id_field: str | None = None,
) -> Row:
    """The row, or its problem: a text that is not one, an id of the wrong kind, or no id where
    `id_field` asks for one on every row."""
    if id_field is not None and id_ is None:
        return bad_row(
            source,
            number,
            f"the id {id_field!r} is missing or null; with an id field every row needs one",
            on_error,
        )
    id_text, id_error = ids(id_)
    if id_error:
        return bad_row(source, number, id_error, on_error)
    if text is None:
        return bad_row(source, number, f"{field!r} is missing or null", on_error, id_text)
    if problem := text_problem(text):
        return bad_row(source, number, f"{field!r} {problem}", on_error, id_text)
    return Row(source, number, text, id_text)
