"""Convert whole model folders: HF layout <-> berta-jax (Flax) layout.

A converted folder is self-contained: `flax_model.safetensors` (per-layer Flax parameter paths,
stored dtype kept, unused HF tensors carried under `hf_extra.`), plus every non-weight file of the
source (config.json, tokenizer files, the sentence-transformers configs and module folders). It
loads without torch. The reverse writes `model.safetensors` with `BertModel` names that transformers
and sentence-transformers load. Each written weights file is committed atomically and read back and
compared before the conversion reports success.

Nothing leaks out of a folder: only regular files inside the source are copied (a symlink that leads
outside it is skipped with a warning), never with wider permissions than the source file. A
destination that exists is refused unless `overwrite=True`; the source itself is never a
destination.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from berta_jax.models.bert.config import BertConfig
from berta_jax.models.registry import read_config
from berta_jax.errors import CheckpointError
from berta_jax.storage.model_files import ModelFiles
from berta_jax.models.bert.params import FlatParams, param_shapes
from berta_jax.storage.stores import copy_file
from berta_jax.convert.checkpoint import (
    EXTRA_PREFIX,
    FLAX_FORMAT,
    FLAX_WEIGHTS,
    HF_INDEX,
    HF_WEIGHTS,
    check_params,
    flax_to_hf,
    hf_to_flax,
    read_checkpoint,
    read_flax_file,
    read_hf_tensors,
)
from berta_jax.convert.safetensors_io import read_safetensors, write_safetensors

# Weight files never copied between layouts: each conversion writes its own.
_WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".h5",
    ".msgpack",
    ".onnx",
    ".ckpt",
    ".pt",
    ".pth",
    ".ot",
)
_WEIGHT_NAMES = {HF_INDEX, "pytorch_model.bin.index.json"}


def _side_files(files: ModelFiles) -> list[str]:
    """Relative names of the config, tokenizer and sentence-transformers files to copy: regular
    files inside the folder; weights, hidden files and links that leave the folder are left out (the
    last with a warning)."""
    names = []
    for path in sorted(files.folder.rglob("*")):
        rel = path.relative_to(files.folder)
        name = rel.as_posix()
        if any(part.startswith(".") for part in rel.parts) or path.is_dir():
            continue
        if (
            path.name in _WEIGHT_NAMES
            or path.name.endswith(_WEIGHT_SUFFIXES)
            or ".index." in path.name
        ):
            continue
        if not path.resolve().is_relative_to(files.root) or not path.is_file():
            warnings.warn(
                f"{path}: not copied: it is a link to {path.resolve()}, outside the model folder, "
                "or not a regular file",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        names.append(name)
    return names


def _prepare_destination(src: Path, dst: Path, overwrite: bool) -> None:
    if dst.resolve() == src.resolve():
        raise CheckpointError(
            f"{dst}: the destination is the source folder; convert into another folder"
        )
    if dst.resolve().is_relative_to(src.resolve()):
        raise CheckpointError(
            f"{dst}: the destination is inside the source folder {src}; choose a folder outside it"
        )
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst} exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise CheckpointError(
            f"{dst} exists and is not empty; pass --overwrite (overwrite=True) to write into it"
        )
    dst.mkdir(parents=True, exist_ok=True)


def _copy_side_files(files: ModelFiles, dst: Path) -> None:
    for name in _side_files(files):
        copy_file(str(files.folder / name), str(dst / name))  # atomic; never wider permissions


def _write_and_verify(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    write_safetensors(path, tensors, metadata)
    written, _ = read_safetensors(path)
    differing = sorted(
        k
        for k in tensors
        if k not in written
        or written[k].dtype != tensors[k].dtype
        or not np.array_equal(
            written[k].view(np.uint8), np.ascontiguousarray(tensors[k]).view(np.uint8)
        )
    )
    if differing or set(written) != set(tensors):
        raise CheckpointError(
            f"{path}: read-back after writing differs for {', '.join(differing) or 'the key set'}"
        )


def hf_folder_to_flax(
    src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Convert an HF / sentence-transformers folder into a berta-jax folder."""
    files, dst = ModelFiles(src), Path(dst)
    cfg = read_config(files)
    if files.exists(FLAX_WEIGHTS) and not (files.exists(HF_WEIGHTS) or files.exists(HF_INDEX)):
        raise CheckpointError(
            f"{files.folder} is already a berta-jax folder ({FLAX_WEIGHTS}); to get an HF folder "
            f"use `berta-jax convert --to hf {src} {dst}`"
        )
    tensors, source = read_hf_tensors(files)
    params, extras = hf_to_flax(tensors, source)
    check_params(params, param_shapes(cfg), source, cfg)
    _prepare_destination(files.folder, dst, overwrite)
    _copy_side_files(files, dst)
    out = {**params, **{EXTRA_PREFIX + k: v for k, v in extras.items()}}
    _write_and_verify(dst / FLAX_WEIGHTS, out, {"format": FLAX_FORMAT})
    return dst / FLAX_WEIGHTS


def flax_folder_to_hf(
    src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Convert a berta-jax folder back into an HF folder that transformers and sentence-transformers
    load."""
    files, dst = ModelFiles(src), Path(dst)
    cfg = read_config(files)
    if not files.exists(FLAX_WEIGHTS):
        kind = (
            "an HF folder"
            if files.exists(HF_WEIGHTS) or files.exists(HF_INDEX)
            else "a folder with no weights"
        )
        raise CheckpointError(
            f"{files.folder} is {kind}, not a berta-jax folder (no {FLAX_WEIGHTS}); to get a "
            f"berta-jax folder use `berta-jax convert {src} {dst}`"
        )
    params, extras = read_flax_file(files)
    check_params(params, param_shapes(cfg), str(files.folder / FLAX_WEIGHTS), cfg)
    _prepare_destination(files.folder, dst, overwrite)
    if (dst / HF_INDEX).exists():
        raise CheckpointError(
            f"{dst / HF_INDEX}: the destination already holds a sharded checkpoint, which loaders "
            f"would prefer to the {HF_WEIGHTS} written now; choose an empty destination folder"
        )
    _copy_side_files(files, dst)
    _write_and_verify(dst / HF_WEIGHTS, {**flax_to_hf(params), **extras}, {"format": "pt"})
    # an earlier conversion's file, which berta-jax would load instead of the weights written now
    (dst / FLAX_WEIGHTS).unlink(missing_ok=True)
    return dst / HF_WEIGHTS


def write_hf_folder(
    params: FlatParams,
    cfg: BertConfig,
    dst: str | os.PathLike,
    side_files_from: str | os.PathLike,
    extras: dict[str, np.ndarray] | None = None,
) -> Path:
    """Save Flax parameters (e.g. after fine-tuning in JAX) as an HF folder, with the source's
    tokenizer and sentence-transformers files, so transformers and sentence-transformers load it.
    `extras` are the HF tensors outside the encoder (the pooler); None keeps the source's.
    Replaces an earlier save in `dst` (each file atomically)."""
    dst, files = Path(dst), ModelFiles(side_files_from)
    check_params(params, param_shapes(cfg), "parameters to save", cfg)
    if (dst / FLAX_WEIGHTS).exists():
        raise CheckpointError(
            f"{dst / FLAX_WEIGHTS} exists, and berta-jax would keep loading it instead of the "
            f"{HF_WEIGHTS} written now; choose another destination folder"
        )
    if dst.resolve() == files.folder.resolve():
        raise CheckpointError(
            f"{dst}: the destination is the source folder; save into another folder"
        )
    # the source's pooler / heads, unchanged, so transformers finds every tensor
    if extras is None:
        _, extras, _ = read_checkpoint(files)
    dst.mkdir(parents=True, exist_ok=True)
    _copy_side_files(files, dst)
    _write_and_verify(dst / HF_WEIGHTS, {**flax_to_hf(params), **extras}, {"format": "pt"})
    return dst / HF_WEIGHTS
