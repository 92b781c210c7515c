"""A training run's settings: one TOML file, any key overridable as `dotted.key=value`.

Every key is declared once in `KEYS` with its type, default and range; a key the schema does not
know is refused naming the closest known one. Open sections (`prompts`, `teacher.prompts`, the
loss's own options, `eval`, `data.datasets`) are checked by their consumers (the loss registry,
the evaluators, the data reader). The resolved settings, defaults filled in, are what a run stores
in its folder and compares on resume.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import sys
from typing import Any, Callable, Mapping

from berta_jax.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class Key:
    """One setting: its kind, default and an optional range check returning a problem or None."""

    kind: str  # str, int, float, bool, strs, ints, floats
    default: Any = None
    check: Callable[[Any], str | None] | None = None
    doc: str = ""


def _positive(v) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _probability(v) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


def _beta(v) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _all_positive(v) -> str | None:
    return None if all(x > 0 for x in v) else "every value must be > 0"


KEYS: dict[str, Key] = {
    "model": Key("str", REQUIRED, doc="the student: a folder, hub id or storage URL"),
    "output_dir": Key("str", REQUIRED, doc="the run folder (checkpoints, metrics, model/)"),
    "steps": Key("int", REQUIRED, _positive, "optimizer steps"),
    "seed": Key("int", 0, _non_negative, "data order and dropout"),
    "dtype": Key("str", "float32", _one_of("float32", "bfloat16"), "compute dtype of matmuls"),
    "remat": Key("bool", False, doc="rematerialise each layer in the backward pass"),
    "data.train": Key("strs", None, doc="files, globs or directories (Parquet, jsonl, csv)"),
    "data.columns": Key("strs", None, doc="input columns in order; `label`/`score` is the label"),
    "data.batch_size": Key("int", 32, _positive, "examples per optimizer micro-step, all devices"),
    "data.shuffle": Key("bool", True),
    "data.max_seq_length": Key("int", None, _positive, "default: the student's"),
    "data.buckets": Key("ints", None, _all_positive, "padded lengths; default 32, 64, ... max"),
    "data.sampler": Key("str", "proportional", _one_of("proportional", "round_robin")),
    "data.no_duplicates": Key("bool", None, doc="default: on for in-batch-negative losses"),
    "loss.name": Key("str", "mnrl"),
    "loss.matryoshka_dims": Key("ints", None, _all_positive),
    "loss.matryoshka_weights": Key("floats", None),
    "loss.gather_across_devices": Key("bool", True, doc="in-batch negatives from every device"),
    "optim.lr": Key("float", 5e-5, _positive),
    "optim.schedule": Key("str", "linear", _one_of("constant", "linear", "cosine")),
    "optim.warmup_steps": Key("int", 0, _non_negative),
    "optim.weight_decay": Key("float", 0.0, _non_negative),
    "optim.max_grad_norm": Key("float", 1.0, _non_negative, "0 turns clipping off"),
    "optim.accumulate": Key("int", 1, _positive, "micro-batches per optimizer step"),
    "optim.b1": Key("float", 0.9, _beta),
    "optim.b2": Key("float", 0.999, _beta),
    "optim.eps": Key("float", 1e-8, _positive),
    "model_config.hidden_dropout_prob": Key("float", None, _probability),
    "model_config.attention_probs_dropout_prob": Key("float", None, _probability),
    "sharding.fsdp": Key("bool", False, doc="shard parameters and optimizer state too"),
    "checkpoint.every": Key("int", 500, _positive),
    "checkpoint.keep": Key("int", 3, _positive),
    "log.every": Key("int", 1, _positive),
    "log.tensorboard": Key("bool", True),
    "teacher.model": Key("str", None, doc="a folder whose embeddings are the labels"),
    "teacher.column": Key("str", None, doc="the column the teacher embeds; default the first"),
    "eval.every": Key("int", None, _positive),
    "eval.metric": Key("str", None, doc="the metric that picks the best checkpoint"),
}
# Sections whose keys the schema leaves to their consumers.
OPEN = ("prompts.", "teacher.prompts.", "loss.", "eval.", "data.datasets.")
# Keys a resumed run may change: they do not change the numbers a run computes.
MAY_CHANGE_ON_RESUME = ("checkpoint.keep", "checkpoint.every", "log.", "eval.")


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_override(item: str) -> tuple[str, Any]:
    """`optim.lr=2e-5` -> ("optim.lr", 2e-05): the value is read as TOML, else as a string."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{item!r}: an override is KEY=VALUE, e.g. optim.lr=2e-5")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def _coerce(key: str, spec: Key, value: Any) -> Any:
    """The value in its declared kind, or a ConfigError naming the key."""
    kind = spec.kind
    scalar = kind.rstrip("s") if kind in ("strs", "ints", "floats") else kind
    items = value if kind != scalar else [value]
    if kind == "strs" and isinstance(value, str):
        items = [value]
    if kind != scalar and not isinstance(items, list):
        raise ConfigError(f"{key}: expected a list of {scalar}s, got {value!r}")
    out = []
    for item in items:
        if scalar == "float" and isinstance(item, int) and not isinstance(item, bool):
            item = float(item)
        wanted = {"str": str, "int": int, "float": float, "bool": bool}[scalar]
        if not isinstance(item, wanted) or (scalar != "bool" and isinstance(item, bool)):
            raise ConfigError(f"{key}: expected {scalar}, got {item!r}")
        if scalar == "float" and not math.isfinite(item):
            raise ConfigError(f"{key}: expected a finite number, got {item!r}")
        out.append(item)
    value = out if kind != scalar else out[0]
    problem = spec.check(value) if spec.check else None
    if problem:
        raise ConfigError(f"{key}: {value!r} {problem}")
    return value


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(KEYS), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{key}: unknown setting{hint} (`berta-jax train --keys` lists them)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The resolved settings of a run: every declared key (defaults filled) and the open ones."""

    values: Mapping[str, Any]
    source: str = "<dict>"

    @classmethod
    def from_dict(cls, tree: Mapping, overrides=(), source: str = "<dict>") -> TrainConfig:
        flat = flatten(tree)
        for item in overrides:
            key, value = parse_override(item) if isinstance(item, str) else item
            flat[key] = value
        resolved: dict[str, Any] = {}
        for key, value in flat.items():
            if key in KEYS:
                resolved[key] = _coerce(key, KEYS[key], value)
            elif key.startswith(OPEN) and key.count(".") >= 1:
                resolved[key] = value
            else:
                raise _unknown(key)
        for key, spec in KEYS.items():
            if key not in resolved:
                if spec.default is REQUIRED:
                    raise ConfigError(f"{source}: `{key}` is required ({spec.doc})")
                resolved[key] = spec.default
        return cls(resolved, source)

    @classmethod
    def from_toml(cls, path: str | os.PathLike, overrides=()) -> TrainConfig:
        try:
            with open(path, "rb") as f:
                tree = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        try:
            return cls.from_dict(tree, overrides, source=os.fspath(path))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def section(self, prefix: str) -> dict[str, Any]:
        """The keys under `prefix.` with the prefix removed (`section("prompts")`)."""
        start = prefix + "."
        return {k[len(start) :]: v for k, v in self.values.items() if k.startswith(start)}

    def to_json(self) -> str:
        return json.dumps(dict(sorted(self.values.items())), indent=2, ensure_ascii=False)

    def changed_keys(self, stored: Mapping[str, Any]) -> list[str]:
        """Keys whose value differs from `stored` and would change what the run computes."""
        keys = set(stored) | set(self.values)
        return sorted(
            k
            for k in keys
            if not k.startswith(MAY_CHANGE_ON_RESUME) and stored.get(k) != self.values.get(k)
        )
