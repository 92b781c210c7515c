"""Typed access to the fields of a parsed JSON object, with errors that name the file and the field.

Every config file berta-jax reads goes through `Fields`: a value of the wrong JSON type (a string
where a boolean belongs, a list where an object belongs, `Infinity` where a finite number belongs)
is a `ConfigError` naming the file and the field, never a TypeError or AttributeError deep in the
loader.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from berta_jax.errors import ConfigError

MISSING: Any = object()


def describe(value: Any) -> str:
    """A short, bounded rendering of a JSON value for messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type."""
    for kind, types in (
        ("null", type(None)),
        ("boolean", bool),
        ("number", (int, float)),
        ("string", str),
        ("array", list),
        ("object", dict),
    ):
        if isinstance(value, types):
            return kind
    return type(value).__name__


class Fields:
    """The fields of one JSON object read from `source` (a file name, or `file: field` for nested
    objects)."""

    def __init__(self, raw: Any, source: str):
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{source}: expected a JSON object, found {json_kind(raw)} {describe(raw)}"
            )
        self.raw, self.source = raw, source

    def __contains__(self, key: str) -> bool:
        return key in self.raw

    def _error(self, key: str, expected: str) -> ConfigError:
        return ConfigError(
            f"{self.source}: field {key}={describe(self.raw[key])}: expected {expected}"
        )

    def _get(self, key: str, default: Any, required: bool) -> Any:
        if key not in self.raw or (
            self.raw[key] is None and not required and default is not MISSING
        ):
            if default is MISSING:
                raise ConfigError(f"{self.source}: missing required field {key!r}")
            return default
        return self.raw[key]

    def int(
        self,
        key: str,
        default: Any = MISSING,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        value = self._get(key, default, required=False)
        if value is default and default is not MISSING:
            return value
        in_range = (minimum is None or value >= minimum) if _is_int(value) else False
        if not (in_range and (maximum is None or value <= maximum)):
            bounds = _bounds(minimum, maximum)
            raise self._error(key, f"an integer{bounds}")
        return int(value)

    def number(
        self,
        key: str,
        default: Any = MISSING,
        *,
        above: float | None = None,
        minimum: float | None = None,
        below: float | None = None,
    ) -> float:
        """A finite number; `above`/`below` are exclusive bounds, `minimum` inclusive."""
        value = self._get(key, default, required=False)
        if value is default and default is not MISSING:
            return value
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (above is None or value > above)
            and (minimum is None or value >= minimum)
            and (below is None or value < below)
        )
        if not ok:
            parts = [
                f"> {above}" if above is not None else "",
                f">= {minimum}" if minimum is not None else "",
                f"< {below}" if below is not None else "",
            ]
            raise self._error(key, "a finite number" + "".join(f" {p}" for p in parts if p))
        return float(value)

    def bool(self, key: str, default: Any = MISSING) -> bool:
        value = self._get(key, default, required=False)
        if value is default and default is not MISSING:
            return value
        if not isinstance(value, bool):
            raise self._error(key, "true or false (a JSON boolean, not a string)")
        return value

    def str(self, key: str, default: Any = MISSING, *, choices: Iterable[str] | None = None) -> str:
        value = self._get(key, default, required=False)
        if value is default and default is not MISSING:
            return value
        choices = tuple(choices) if choices is not None else None
        if not isinstance(value, str) or (choices is not None and value not in choices):
            raise self._error(
                key, "a string" + (f", one of {', '.join(choices)}" if choices else "")
            )
        return value

    def str_map(self, key: str, default: Any = MISSING) -> dict[str, str]:
        value = self._get(key, default, required=False)
        if value is default and default is not MISSING:
            return value
        if not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
            raise self._error(key, "an object mapping names to strings")
        return dict(value)

    def list(
        self,
        key: str,
        default: Any = MISSING,
        *,
        item: Callable[[Any], bool] = lambda _: True,
        what: str = "values",
    ) -> list:
        value = self._get(key, default, required=False)
        if value is default and default is not MISSING:
            return value
        if not (isinstance(value, list) and all(item(v) for v in value)):
            raise self._error(key, f"an array of {what}")
        return list(value)

    def object(self, key: str, default: Any = MISSING) -> Fields:
        value = self._get(key, default, required=False)
        if value is default and default is not MISSING:
            return Fields({} if value is None else value, f"{self.source}: field {key}")
        return Fields(value, f"{self.source}: field {key}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bounds(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    return f" <= {maximum}" if maximum is not None else ""
