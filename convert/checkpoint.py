"""Read Hugging Face and berta-jax checkpoints into flat per-layer Flax parameter dicts, and check
them.

A flat parameter dict maps per-layer dotted Flax paths (`layers.3.attention.query.kernel`) to numpy
arrays in their stored dtype. This module turns HF tensors into that form and back, through the
table in `convert.mapping`, and checks a parameter dict against the shapes a config implies, raising
once. When many tensors disagree for one reason (config.json does not describe these weights), the
error says that reason first and lists a few examples.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from berta_jax.models.bert.config import BertConfig
from berta_jax.errors import CheckpointError
from berta_jax.storage.model_files import FLAX_WEIGHTS, HF_INDEX, HF_WEIGHTS, ModelFiles
from berta_jax.storage.json_fields import Fields
from berta_jax.models.bert.params import FlatParams
from berta_jax.models.bert import names as mapping
from berta_jax.convert.safetensors_io import read_header, read_safetensors

FLAX_FORMAT = "berta_jax"
# Tensors the encoder does not use, carried through the Flax file under this
# prefix so that HF -> Flax -> HF gives back every tensor.
EXTRA_PREFIX = "hf_extra."
PICKLE_WEIGHTS = (
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "tf_model.h5",
    "model.ckpt.index",
)
_EXAMPLES = 5


def _listing(keys: list[str], limit: int = _EXAMPLES) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def read_hf_tensors(files: ModelFiles) -> tuple[dict[str, np.ndarray], str]:
    """Every tensor of an HF checkpoint folder (single-file or sharded) and a description of its
    source."""
    if files.exists(HF_INDEX):
        return _read_sharded(files), str(files.folder / HF_INDEX)
    if files.exists(HF_WEIGHTS):
        return read_safetensors(files.path(HF_WEIGHTS, limit=None))[0], str(
            files.folder / HF_WEIGHTS
        )
    pickled = [name for name in PICKLE_WEIGHTS if files.exists(name)]
    if pickled:
        raise CheckpointError(
            f"{files.folder}: only {pickled[0]} is present. berta-jax never loads pickle "
            "checkpoints (unpickling can run arbitrary code). Convert it once with PyTorch in a "
            "trusted environment: `transformers.AutoModel.from_pretrained(path)"
            ".save_pretrained(path, safe_serialization=True)`."
        )
    raise CheckpointError(
        f"{files.folder}: no {HF_WEIGHTS}, {HF_INDEX} or {FLAX_WEIGHTS}; this folder holds no "
        "weights"
    )


def _read_sharded(files: ModelFiles) -> dict[str, np.ndarray]:
    """Check a sharded index against its shards' headers, then read the shards."""
    index_path = files.folder / HF_INDEX
    weight_map = Fields(files.read_json(HF_INDEX), str(index_path)).str_map("weight_map")
    if not weight_map:
        raise CheckpointError(f"{index_path}: the weight_map is empty")
    shards = sorted(set(weight_map.values()))
    missing_files = [s for s in shards if not files.exists(s)]
    if missing_files:
        raise CheckpointError(
            f"{index_path}: names shard file(s) that do not exist: {_listing(missing_files)}"
        )
    paths = {
        shard: files.path(shard, limit=None) for shard in shards
    }  # inside the folder, regular files
    owner: dict[str, str] = {}
    problems = []
    for shard in shards:
        header, _, _ = read_header(paths[shard])
        for name in header:
            if name in owner:
                problems.append(f"{name} is in both {owner[name]} and {shard}")
            owner[name] = shard
    for name, shard in weight_map.items():
        if owner.get(name) != shard:
            where = f"found in {owner[name]}" if name in owner else "absent from every shard"
            problems.append(f"{name} is indexed in {shard} but {where}")
    if problems:
        raise CheckpointError(f"{index_path}: index and shards disagree: {_listing(problems, 40)}")
    tensors: dict[str, np.ndarray] = {}
    for shard in shards:
        tensors.update(read_safetensors(paths[shard])[0])
    return tensors


def hf_to_flax(
    tensors: dict[str, np.ndarray], source: str
) -> tuple[FlatParams, dict[str, np.ndarray]]:
    """Split HF tensors into Flax parameters and the explicitly ignored extras.

    Raises CheckpointError naming every key that is neither a parameter nor on the ignore list.
    """
    names = mapping.strip_prefix(list(tensors), source)
    params: FlatParams = {}
    extras: dict[str, np.ndarray] = {}
    unexpected, clashes = [], []
    for key, name in names.items():
        hit = mapping.hf_to_flax_name(name)
        if hit is not None:
            path, transform = hit
            if path in params:
                clashes.append(key)
            params[path] = mapping.apply_transform(tensors[key], transform)
        elif mapping.is_ignored(name):
            extras[name] = tensors[key]
        else:
            unexpected.append(key)
    if unexpected or clashes:
        parts = []
        if unexpected:
            parts.append(
                "unexpected key(s) that are not BERT encoder weights: "
                f"{_listing(sorted(unexpected), 40)}"
            )
        if clashes:
            parts.append(f"key(s) that repeat another parameter: {_listing(sorted(clashes), 40)}")
        raise CheckpointError(
            f"{source}: {'; '.join(parts)}. Only the encoder, embeddings.position_ids, pooler.* "
            "and cls.* are recognised."
        )
    return params, extras


def flax_to_hf(params: FlatParams) -> dict[str, np.ndarray]:
    """Flax parameters -> HF `BertModel` tensor names (no prefix)."""
    out = {}
    for path, array in params.items():
        hit = mapping.flax_to_hf_name(path)
        if hit is None:
            raise CheckpointError(
                f"Flax parameter {path!r} has no Hugging Face name in the mapping table"
            )
        name, transform = hit
        out[name] = mapping.apply_transform(array, transform)
    return out


def weights_shape(params: FlatParams) -> dict[str, int]:
    """The config fields the weights themselves imply (read off the embedding and first-layer
    tensors)."""
    found = {}
    for path, field, axis in (
        ("embeddings.word.embedding", "vocab_size", 0),
        ("embeddings.word.embedding", "hidden_size", 1),
        ("embeddings.position.embedding", "max_position_embeddings", 0),
        ("embeddings.token_type.embedding", "type_vocab_size", 0),
        ("layers.0.ffn_in.kernel", "intermediate_size", 1),
    ):
        if path in params and params[path].ndim > axis:
            found[field] = int(params[path].shape[axis])
    layers = {
        int(p.split(".")[1])
        for p in params
        if p.startswith("layers.") and p.split(".")[1].isdigit()
    }
    if layers:
        found["num_hidden_layers"] = max(layers) + 1
    return found


def _config_disagreement(params: FlatParams, cfg: BertConfig | None) -> str:
    if cfg is None:
        return ""
    implied = weights_shape(params)
    wrong = {k: v for k, v in implied.items() if getattr(cfg, k) != v}
    if not wrong:
        return ""
    said = ", ".join(f"{k}={getattr(cfg, k)}" for k in wrong)
    have = ", ".join(f"{k}={v}" for k, v in wrong.items())
    return (
        f"config.json says {said}; the weights have {have}. Use the config.json that belongs to "
        "these weights. "
    )


def check_params(
    params: FlatParams,
    expected: dict[str, tuple[int, ...]],
    source: str,
    cfg: BertConfig | None = None,
) -> None:
    """Raise once, naming the missing, unexpected, misshapen, non-float and non-finite parameters
    (the reason first when config.json does not describe the weights, then a few examples of each
    kind)."""
    problems = []
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    if missing:
        problems.append(f"missing parameter(s): {_listing([_hf_name(p) for p in missing])}")
    if unexpected:
        problems.append(f"unexpected parameter(s): {_listing(unexpected)}")
    bad_shapes, bad_dtypes, non_finite = [], [], []
    for path in sorted(set(expected) & set(params)):
        array = params[path]
        if tuple(array.shape) != tuple(expected[path]):
            bad_shapes.append(
                f"{_hf_name(path)}: checkpoint {tuple(array.shape)} vs expected "
                f"{tuple(expected[path])}"
            )
        elif not _is_float(array.dtype):
            bad_dtypes.append(f"{_hf_name(path)} ({array.dtype})")
        elif not np.isfinite(array).all():
            non_finite.append(_hf_name(path))
    if bad_shapes:
        problems.append(
            f"shape mismatch (config.json does not match the weights): {_listing(bad_shapes)}"
        )
    if bad_dtypes:
        problems.append(f"non-floating weights: {_listing(bad_dtypes)}")
    if non_finite:
        problems.append(f"NaN or Inf in: {_listing(non_finite)}")
    if problems:
        raise CheckpointError(
            f"{source}: {_config_disagreement(params, cfg)}" + "; ".join(problems)
        )


def _is_float(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype == ml_dtypes.bfloat16


def _hf_name(path: str) -> str:
    """`hf.name (flax.path)` for messages, so both vocabularies find the tensor."""
    hit = mapping.flax_to_hf_name(path)
    return f"{hit[0]} ({path})" if hit else path


def read_flax_file(files: ModelFiles) -> tuple[FlatParams, dict[str, np.ndarray]]:
    """A berta-jax weights file -> (Flax parameters, carried HF extras)."""
    path = files.path(FLAX_WEIGHTS, limit=None)
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != FLAX_FORMAT:
        raise CheckpointError(
            f"{path}: metadata format={metadata.get('format')!r}, expected {FLAX_FORMAT!r}; "
            "this is not a file written by `berta-jax convert`"
        )
    params = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    extras = {k[len(EXTRA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    return params, extras


def read_checkpoint(files: ModelFiles) -> tuple[FlatParams, dict[str, np.ndarray], str]:
    """(Flax parameters, extra HF tensors, source) of a model folder, converted or HF layout (the
    converted file wins)."""
    if files.exists(FLAX_WEIGHTS):
        return (*read_flax_file(files), str(files.folder / FLAX_WEIGHTS))
    tensors, source = read_hf_tensors(files)
    return (*hf_to_flax(tensors, source), source)


def read_params(files: ModelFiles) -> tuple[FlatParams, str]:
    """Flax parameters of a model folder and where they came from."""
    params, _, source = read_checkpoint(files)
    return params, source
