"""Students for distillation, made from a teacher's sentence-transformers folder.

`keep_layers` keeps some of the teacher's layers (sentence-transformers' layer-reduction
recipe: the embeddings and the chosen layers copied, in the order given); `new_student` makes a
smaller, randomly initialised BERT with the teacher's tokenizer and pooling. Both write a whole
sentence-transformers folder (config.json, model.safetensors, tokenizer, modules and pooling) that
transformers, sentence-transformers and berta-jax load, and can write prompts into
`config_sentence_transformers.json` (BERTA's `search_query: ` / `search_document: `, say). The
folder is built beside its place and renamed in, so a folder at the final path is always whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from berta_jax.convert.checkpoint import read_checkpoint
from berta_jax.convert.folders import write_hf_folder
from berta_jax.errors import ConfigError
from berta_jax.models.bert.config import BertConfig
from berta_jax.models.bert.params import param_shapes
from berta_jax.models.registry import read_config
from berta_jax.storage.local import LocalStore
from berta_jax.storage.model_files import ModelFiles

_LAYER = re.compile(r"layers\.(\d+)\.(.+)\Z")
# config.json fields a student's shape sets
_SHAPE = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size")


def keep_layers(
    teacher_folder: str | os.PathLike,
    layers: Sequence[int],
    out: str | os.PathLike,
    prompts: Mapping[str, str] | None = None,
) -> Path:
    """A student whose encoder is the teacher's `layers` (e.g. [0, 2, 4]), in that order, on the
    teacher's embeddings; the pooler and every side file copied. Returns the folder."""
    files = ModelFiles(teacher_folder)
    cfg = read_config(files)
    layers = list(layers)
    bad = [i for i in layers if not isinstance(i, int) or not 0 <= i < cfg.num_hidden_layers]
    if not layers or bad or len(set(layers)) != len(layers):
        raise ConfigError(
            f"layers={layers}: give distinct layer indices of {files.folder}, each in "
            f"0..{cfg.num_hidden_layers - 1}" + (f" ({bad} are not)" if bad else "")
        )
    params, extras, _ = read_checkpoint(files)
    kept = {}
    for name, value in params.items():
        match = _LAYER.match(name)
        if match is None:
            kept[name] = value
        elif int(match[1]) in layers:
            kept[f"layers.{layers.index(int(match[1]))}.{match[2]}"] = value
    student = dataclasses.replace(cfg, num_hidden_layers=len(layers))
    return _write(files, student, kept, extras, out, prompts)


def new_student(
    teacher_folder: str | os.PathLike,
    out: str | os.PathLike,
    hidden_size: int,
    num_attention_heads: int,
    num_hidden_layers: int,
    intermediate_size: int,
    seed: int,
    prompts: Mapping[str, str] | None = None,
) -> Path:
    """A randomly initialised student of the given shape with the teacher's vocabulary, position
    limit, tokenizer and pooling. The init is transformers' BERT init: every matrix and embedding
    table normal(0, initializer_range) (the teacher's, default 0.02) with the padding token's
    embedding row 0, every bias 0, LayerNorm scale 1 and bias 0. Returns the folder."""
    files = ModelFiles(teacher_folder)
    cfg = read_config(files)
    shape = dict(zip(_SHAPE, (hidden_size, num_attention_heads, num_hidden_layers,
                              intermediate_size)))
    for name, value in shape.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"new_student: {name}={value!r} must be a positive integer")
    student = dataclasses.replace(cfg, **shape)  # BertConfig checks heads divide the width
    std = files.read_json("config.json").get("initializer_range", 0.02)
    if not isinstance(std, (int, float)) or not 0 < std < 1:
        raise ConfigError(f"{files.folder / 'config.json'}: initializer_range={std!r} is not a "
                          "number in (0, 1)")
    rng = np.random.default_rng(seed)
    params = {name: _init(name, shape_, std, rng) for name, shape_ in param_shapes(student).items()}
    params["embeddings.word.embedding"][student.pad_token_id] = 0.0
    extras = {
        "pooler.dense.weight": _normal(rng, (hidden_size, hidden_size), std),
        "pooler.dense.bias": np.zeros(hidden_size, np.float32),
    }
    return _write(files, student, params, extras, out, prompts)


def _normal(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _init(name: str, shape: tuple[int, ...], std: float, rng: np.random.Generator) -> np.ndarray:
    if name.endswith(".scale"):
        return np.ones(shape, np.float32)
    if name.endswith(".bias"):
        return np.zeros(shape, np.float32)
    return _normal(rng, shape, std)


def _write(files: ModelFiles, cfg: BertConfig, params, extras, out, prompts) -> Path:
    """The folder `out`: weights, the teacher's side files, config.json with the student's shape,
    the pooling's width and the prompts; built in `out.partial`, then renamed in."""
    out = Path(out)
    if out.resolve().is_relative_to(files.folder.resolve()):
        raise ConfigError(f"{out}: a student is written outside the teacher's folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; choose another or remove it")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    hf_extras = {k: v for k, v in extras.items() if not k.endswith("position_ids")}
    write_hf_folder(params, cfg, partial, side_files_from=files.folder, extras=hf_extras)
    _update_json(partial / "config.json", {k: getattr(cfg, k) for k in _SHAPE})
    for pooling in _pooling_folders(partial):
        width = {"word_embedding_dimension": cfg.hidden_size}
        _update_json(partial / pooling / "config.json", width)
    if prompts is not None:
        _write_prompts(partial, prompts)
    if out.exists():
        out.rmdir()  # empty, checked above
    os.replace(partial, out)
    return out


def _pooling_folders(folder: Path) -> list[str]:
    modules = json.loads((folder / "modules.json").read_text())
    return [m["path"] for m in modules if str(m.get("type", "")).endswith(".Pooling")]


def _update_json(path: Path, fields: Mapping) -> None:
    raw = json.loads(path.read_text()) if path.exists() else {}
    raw.update(fields)
    LocalStore().write(str(path), (json.dumps(raw, indent=2, ensure_ascii=False) + "\n").encode())


def _write_prompts(folder: Path, prompts: Mapping[str, str]) -> None:
    bad = [k for k, v in prompts.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise ConfigError(f"prompts: names and prompts are strings ({bad} are not)")
    _update_json(folder / "config_sentence_transformers.json", {"prompts": dict(prompts)})
