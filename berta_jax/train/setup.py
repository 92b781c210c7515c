"""From settings to the pieces of a run: the student, its datasets with prompts and labels, the
loss. Each check names the setting, file or column at fault before any step runs."""

from __future__ import annotations

import dataclasses
import os

from berta_jax.convert.checkpoint import read_params
from berta_jax.errors import ConfigError
from berta_jax.loading.folder import ModelFolder
from berta_jax.loading.weights import build_model
from berta_jax.models.bert.model import BertModel
from berta_jax.text.tokenize import TextTokenizer
from berta_jax.train.config import TrainConfig
from berta_jax.train.data import TrainSet, read_train_set
from berta_jax.train.losses import Loss, make_loss, matryoshka
from berta_jax.train.teacher import teacher_vectors

# Losses whose in-batch negatives make a repeated text a false negative.
IN_BATCH_NEGATIVES = ("mnrl", "cached_mnrl")
_OWN_LOSS_KEYS = ("name", "matryoshka_dims", "matryoshka_weights", "gather_across_devices")


@dataclasses.dataclass
class Student:
    folder: ModelFolder
    model: BertModel
    tokenizer: TextTokenizer


def load_student(cfg: TrainConfig, dtype) -> Student:
    """The student with the run's overrides of its config (dropout rates, context)."""
    folder = ModelFolder.open(cfg["model"], max_seq_length=cfg["data.max_seq_length"])
    overrides = {
        name: cfg[f"model_config.{name}"]
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob")
        if cfg[f"model_config.{name}"] is not None
    }
    config = dataclasses.replace(folder.config, **overrides)
    params, source = read_params(folder.files)
    model = build_model(config, params, source, dtype=dtype, remat=cfg["remat"])
    sentence = folder.sentence
    tokenizer = TextTokenizer.from_files(
        folder.files, sentence.max_seq_length, config.vocab_size, sentence.lowercase
    )
    return Student(dataclasses.replace(folder, config=config), model, tokenizer)


def dataset_specs(cfg: TrainConfig) -> list[tuple[str, list[str], list[str] | None]]:
    """(name, files, columns) of each dataset: `data.train` alone, or `data.datasets.NAME.*`."""
    named = cfg.section("data.datasets")
    if named and cfg["data.train"]:
        raise ConfigError("data.train and data.datasets: give one or the other")
    if not named:
        if not cfg["data.train"]:
            raise ConfigError(f"{cfg.source}: `data.train` is required (files or globs)")
        return [("train", cfg["data.train"], cfg["data.columns"])]
    specs: dict[str, dict] = {}
    for key, value in named.items():
        name, _, field = key.partition(".")
        if field not in ("train", "columns"):
            raise ConfigError(f"data.datasets.{key}: a dataset has `train` and `columns`")
        specs.setdefault(name, {})[field] = [value] if isinstance(value, str) else value
    for name, spec in specs.items():
        if "train" not in spec:
            raise ConfigError(f"data.datasets.{name}.train is required")
    return [(name, s["train"], s.get("columns")) for name, s in specs.items()]


def build_loss(cfg: TrainConfig) -> Loss:
    options = {k: v for k, v in cfg.section("loss").items() if k not in _OWN_LOSS_KEYS}
    loss = make_loss(cfg["loss.name"], **options)
    if cfg["loss.matryoshka_dims"]:
        loss = matryoshka(loss, cfg["loss.matryoshka_dims"], cfg["loss.matryoshka_weights"])
    return loss


def read_datasets(cfg: TrainConfig, loss: Loss, cache_dir: str, log) -> list[TrainSet]:
    """Every dataset, with the teacher's vectors as labels when a teacher is set."""
    sets = [read_train_set(*spec) for spec in dataset_specs(cfg)]
    teacher = cfg["teacher.model"]
    for data in sets:
        if teacher:
            if data.labels is not None:
                raise ConfigError(
                    f"{data.files[0][0]}: has a label column ({data.label_column}) and "
                    "teacher.model is set; use one"
                )
            column = cfg["teacher.column"] or data.text_columns[0]
            if column not in data.text_columns:
                raise ConfigError(f"teacher.column={column!r}: not among {data.text_columns}")
            prompt = cfg.section("teacher.prompts").get(column)
            cache = os.path.join(cache_dir, f"{data.name}.npy")
            texts = data.texts[data.text_columns.index(column)]
            data.labels = teacher_vectors(teacher, texts, prompt, cache, log=log)
            data.label_column = f"teacher({column})"
        if getattr(loss, "needs_labels", False) and data.labels is None:
            raise ConfigError(
                f"loss {cfg['loss.name']!r} needs labels: dataset {data.name!r} "
                f"({data.files[0][0]}) has no `label` or `score` column and no teacher.model is set"
            )
    return sets


def column_prompts(cfg: TrainConfig, student: Student, sets: list[TrainSet]) -> list[list[str]]:
    """Each dataset's prompt per text column: `prompts.COLUMN` or `prompts.DATASET.COLUMN`, a
    prompt name of the student or a prompt string; none by default (as sentence-transformers'
    trainer)."""
    given = cfg.section("prompts")
    known = {c for s in sets for c in s.text_columns} | {
        f"{s.name}.{c}" for s in sets for c in s.text_columns
    }
    for key in given:
        if key not in known:
            raise ConfigError(
                f"prompts.{key}: no such column (columns: {', '.join(sorted(known))})"
            )
    named = student.folder.sentence.prompts
    out = []
    for data in sets:
        row = []
        for column in data.text_columns:
            value = given.get(f"{data.name}.{column}", given.get(column, ""))
            if not isinstance(value, str):
                raise ConfigError(f"prompts.{column}: a prompt is a string, got {value!r}")
            row.append(named.get(value, value))
        out.append(row)
    return out


def teacher_dim(sets: list[TrainSet]) -> int | None:
    dims = {s.labels.shape[1] for s in sets if s.labels is not None and s.labels.ndim == 2}
    if len(dims) > 1:
        raise ConfigError(f"the datasets' teacher vectors differ in width: {sorted(dims)}")
    return dims.pop() if dims else None


def check_columns(sets: list[TrainSet], accumulate: int) -> None:
    counts = {len(s.text_columns) for s in sets}
    if len(counts) > 1 and accumulate > 1:
        raise ConfigError(
            "optim.accumulate > 1 needs datasets with one column count "
            f"({', '.join(f'{s.name}: {len(s.text_columns)}' for s in sets)})"
        )
