"""Finding a model: hub ids offline (the real huggingface_hub code), local folders, clear errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from berta_jax import Encoder, ModelNotFoundError
from berta_jax.cli.commands import CARD_PAIRS, card_cosines


def _offline(tmp_path: Path, monkeypatch) -> Path:
    cache = tmp_path / "hf" / "hub"
    for key, value in dict(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(cache)).items():
        monkeypatch.setenv(key, value)
    return cache


def test_hub_id_offline_without_cache_gives_one_clear_error(tmp_path, monkeypatch):
    cache = _offline(tmp_path, monkeypatch)
    with pytest.raises(ModelNotFoundError) as info:
        Encoder.from_pretrained("sergeyzh/BERTA", cache_dir=str(cache))
    msg = str(info.value)
    assert "sergeyzh/BERTA" in msg and "no cached copy" in msg and "local model folder" in msg


def test_hub_id_resolves_to_a_cached_snapshot_offline(tiny_bert_dir, tmp_path, monkeypatch):
    """The real huggingface_hub path: a snapshot in the cache layout is found with no network."""
    cache = _offline(tmp_path, monkeypatch)
    repo = cache / "models--someone--tiny-bert"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_bert_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    encoder = Encoder.from_pretrained("someone/tiny-bert", cache_dir=str(cache))
    np.testing.assert_array_equal(encoder.encode(["x"]), Encoder.from_pretrained(tiny_bert_dir).encode(["x"]))


@pytest.mark.parametrize("bad", ["./no/such/folder", "/definitely/not/here", "a/b/c"])
def test_missing_local_folder_is_not_sent_to_the_hub(bad):
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        Encoder.from_pretrained(bad)


BERTA_DIR_VAR = "BERTA_JAX_BERTA_DIR"


@pytest.mark.skipif(
    not os.environ.get(BERTA_DIR_VAR),
    reason=f"needs the real sergeyzh/BERTA weights: set {BERTA_DIR_VAR}=/path/to/BERTA (a folder downloaded with "
    "`hf download sergeyzh/BERTA --local-dir ...`) to check the model card's cosines",
)
def test_model_card_cosines_with_real_berta_weights():
    encoder = Encoder.from_pretrained(os.environ[BERTA_DIR_VAR])
    assert encoder.sentence.default_prompt_name == "categorize_entailment"
    np.testing.assert_allclose(card_cosines(encoder), [pair[-1] for pair in CARD_PAIRS], atol=1e-4)
    # the same through the prompt names, as the card's sentence-transformers example does
    q = encoder.encode_query([CARD_PAIRS[2][1]])[0]
    d = encoder.encode_document([CARD_PAIRS[2][3]])[0]
    assert abs(float(q @ d) - 0.7839136) <= 1e-4
