"""Model families by config.json's `model_type`: what it takes to read, build and name a family.

A sibling family (XLM-RoBERTa, say) is one folder beside `bert/` (its config, model and name table)
and one row in `FAMILIES`; the loader, the converter and the encoder find it here.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import Any

from berta_jax.errors import ConfigError
from berta_jax.models.bert import names as bert_names
from berta_jax.models.bert.config import MODEL_TYPE as BERT, BertConfig
from berta_jax.storage.json_fields import Fields
from berta_jax.storage.model_files import ModelFiles


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family: its config type (`from_dict(raw, source)`), its Hugging Face name table,
    and the package whose `model` module builds it (`abstract_model(cfg, ...)`: imported on use,
    since it imports JAX and reading a config must not)."""

    model_type: str
    config: type
    names: ModuleType
    package: str

    def module(self, name: str) -> ModuleType:
        """The family's module `name` ("model", "params")."""
        return importlib.import_module(f"{self.package}.{name}")


FAMILIES: dict[str, Family] = {
    BERT: Family(BERT, BertConfig, bert_names, "berta_jax.models.bert"),
}


def family_for(config: Any) -> Family:
    """The family a typed config belongs to."""
    found = [f for f in FAMILIES.values() if isinstance(config, f.config)]
    if not found:
        raise TypeError(
            f"{type(config).__name__} is no model family's config; families: {', '.join(FAMILIES)}"
        )
    return found[0]


def family_of(model_type: str, source: str = "config.json") -> Family:
    """The family for a `model_type`, or a ConfigError naming the file and the families berta-jax
    implements."""
    if model_type not in FAMILIES:
        raise ConfigError(
            f"{source}: field model_type={model_type!r} is not a family berta-jax implements; "
            f"implemented: {', '.join(FAMILIES)}"
        )
    return FAMILIES[model_type]


def read_config(files: ModelFiles, name: str = "config.json"):
    """The typed config of a model folder's config.json, read by its family's config type."""
    source = str(files.folder / name)
    raw = files.read_json(name)
    model_type = Fields(raw, source).str("model_type")
    return family_of(model_type, source).config.from_dict(raw, source=source)
