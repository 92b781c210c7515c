"""A trained model out as a sentence-transformers folder.

The folder is the student's own (config.json, tokenizer, `modules.json`, pooling, prompts and the
default prompt, unchanged) with the trained weights in `model.safetensors`, so
sentence-transformers, transformers and berta-jax load it. It is written beside its place and
renamed in, so a folder at the final path is always whole. A train-only projection (embedding
distillation to a teacher of another width) is saved beside the model, never in it.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from berta_jax.convert.folders import write_hf_folder
from berta_jax.models.bert.config import BertConfig
from berta_jax.models.bert.params import flat_params


def _flat(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        else:
            out[name] = np.asarray(value, np.float32)
    return out


def export_model(params, cfg: BertConfig, student_folder, destination: str, aux=None) -> str:
    """Write the sentence-transformers folder `destination` (replacing an earlier export) and,
    with `aux`, `destination`.projection.safetensors beside it; returns the folder."""
    partial = destination + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    state = nnx.State(params) if isinstance(params, dict) else params
    write_hf_folder(
        {k: np.asarray(v, np.float32) for k, v in flat_params(state).items()},
        cfg,
        partial,
        side_files_from=student_folder,
    )
    if os.path.exists(destination):
        old = destination + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(destination, old)
        os.replace(partial, destination)
        shutil.rmtree(old)
    else:
        os.replace(partial, destination)
    if aux:
        save_file(_flat(aux), destination + ".projection.safetensors")
    return destination
