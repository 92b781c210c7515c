"""Convert whole model folders: HF layout <-> berta-jax (Flax) layout.

A converted folder is self-contained: `flax_model.safetensors` (Flax parameter
paths, stored dtype kept, unused HF tensors carried under `hf_extra.`), plus
every non-weight file of the source (config.json, tokenizer files, the
sentence-transformers configs and module folders). It loads without torch.
The reverse writes `model.safetensors` with `BertModel` names that transformers
and sentence-transformers load. Each written weights file is committed
atomically and read back and compared before the conversion reports success.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from berta_jax.config import BertConfig
from berta_jax.errors import CheckpointError
from berta_jax.weights import param_shapes
from convert.checkpoint import (
    EXTRA_PREFIX,
    FLAX_FORMAT,
    FLAX_WEIGHTS,
    HF_INDEX,
    HF_WEIGHTS,
    check_params,
    flax_to_hf,
    hf_to_flax,
    read_flax_file,
    read_hf_tensors,
)
from convert.safetensors_io import atomic_copy, read_safetensors, write_safetensors

# Weight files never copied between layouts: each conversion writes its own.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack", ".onnx", ".ckpt", ".pt", ".pth", ".ot")
_WEIGHT_NAMES = {HF_INDEX, "pytorch_model.bin.index.json"}


def _copy_side_files(src: Path, dst: Path) -> None:
    """Copy config, tokenizer and sentence-transformers files; skip weights and hidden files."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.name in _WEIGHT_NAMES or path.name.endswith(_WEIGHT_SUFFIXES) or ".index." in path.name:
            continue
        target = dst / rel
        if target.exists() and target.samefile(path):
            continue
        atomic_copy(path, target)  # a killed conversion never leaves a torn tokenizer or config


def _write_and_verify(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    write_safetensors(path, tensors, metadata)
    written, _ = read_safetensors(path)
    differing = sorted(
        k for k in tensors if k not in written or written[k].dtype != tensors[k].dtype
        or not np.array_equal(written[k].view(np.uint8), np.ascontiguousarray(tensors[k]).view(np.uint8))
    )
    if differing or set(written) != set(tensors):
        raise CheckpointError(f"{path}: read-back after writing differs for {', '.join(differing) or 'the key set'}")


def hf_folder_to_flax(src: str | Path, dst: str | Path) -> Path:
    """Convert an HF / sentence-transformers folder into a berta-jax folder (dst may equal src)."""
    src, dst = Path(src), Path(dst)
    cfg = BertConfig.from_json(src / "config.json")
    tensors, source = read_hf_tensors(src)
    params, extras = hf_to_flax(tensors, source)
    check_params(params, param_shapes(cfg), source)
    dst.mkdir(parents=True, exist_ok=True)
    _copy_side_files(src, dst)
    out = {**params, **{EXTRA_PREFIX + k: v for k, v in extras.items()}}
    _write_and_verify(dst / FLAX_WEIGHTS, out, {"format": FLAX_FORMAT})
    return dst / FLAX_WEIGHTS


def flax_folder_to_hf(src: str | Path, dst: str | Path) -> Path:
    """Convert a berta-jax folder back into an HF folder that transformers and sentence-transformers load."""
    src, dst = Path(src), Path(dst)
    cfg = BertConfig.from_json(src / "config.json")
    params, extras = read_flax_file(src / FLAX_WEIGHTS)
    check_params(params, param_shapes(cfg), str(src / FLAX_WEIGHTS))
    if (dst / HF_INDEX).exists():
        raise CheckpointError(
            f"{dst / HF_INDEX}: the destination already holds a sharded checkpoint, which loaders would prefer "
            f"to the {HF_WEIGHTS} written now; choose an empty destination folder"
        )
    dst.mkdir(parents=True, exist_ok=True)
    _copy_side_files(src, dst)
    _write_and_verify(dst / HF_WEIGHTS, {**flax_to_hf(params), **extras}, {"format": "pt"})
    return dst / HF_WEIGHTS


def write_hf_folder(params: dict[str, np.ndarray], cfg: BertConfig, dst: str | Path, side_files_from: str | Path) -> Path:
    """Save Flax parameters (e.g. after fine-tuning in JAX) as an HF folder, with the source's tokenizer and
    sentence-transformers files, so transformers and sentence-transformers load it."""
    dst, src = Path(dst), Path(side_files_from)
    check_params(params, param_shapes(cfg), "parameters to save")
    if (dst / FLAX_WEIGHTS).exists():
        raise CheckpointError(
            f"{dst / FLAX_WEIGHTS} exists, and berta-jax would keep loading it instead of the {HF_WEIGHTS} "
            "written now; choose another destination folder"
        )
    extras = _extras(src)  # the source's pooler / heads, unchanged, so transformers finds every tensor
    dst.mkdir(parents=True, exist_ok=True)
    _copy_side_files(src, dst)
    _write_and_verify(dst / HF_WEIGHTS, {**flax_to_hf(params), **extras}, {"format": "pt"})
    return dst / HF_WEIGHTS


def _extras(folder: Path) -> dict[str, np.ndarray]:
    """The tensors a model folder carries beside the encoder (pooler, heads, position ids)."""
    if (folder / FLAX_WEIGHTS).exists():
        return read_flax_file(folder / FLAX_WEIGHTS)[1]
    tensors, source = read_hf_tensors(folder)
    return hf_to_flax(tensors, source)[1]
