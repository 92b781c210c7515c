"""What makes a value a text the tokenizer can take, in one place for every way in (the API, the
job, engines).

A text is a `str` whose every code point is a Unicode scalar value: a lone surrogate (`"\\ud800"`,
which JSON and Python allow but UTF-8 cannot encode) would make the tokenizers library fail with a
bare `TypeError`. Kept free of JAX so the job's readers and the engines' launchers can use it
without importing it.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(value) -> str | None:
    """Why `value` cannot be embedded, in a phrase that follows the value's name; None for a good
    text."""
    if not isinstance(value, str):
        return f"is {type(value).__name__}, not a string"
    return surrogate_problem(value)


def surrogate_problem(value: str) -> str | None:
    """The first lone surrogate in `value` (its code point and character index), or None."""
    found = _SURROGATE.search(value)
    if found is None:
        return None
    return (
        f"holds a lone surrogate U+{ord(found.group()):04X} at character {found.start()}, which is "
        "not Unicode text (UTF-8 cannot encode it); fix or drop the row"
    )
