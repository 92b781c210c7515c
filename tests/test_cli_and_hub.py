"""The demo job, hub resolution (offline, real huggingface_hub code) and the model card's numbers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from berta_jax import Encoder, ModelNotFoundError
from berta_jax.cli import CARD_PAIRS, card_cosines


def _offline_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"))
    return env


def test_hub_id_offline_without_cache_gives_one_clear_error(tmp_path, monkeypatch):
    for key, value in _offline_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ModelNotFoundError) as info:
        Encoder.from_pretrained("sergeyzh/BERTA", cache_dir=str(tmp_path / "hf" / "hub"))
    msg = str(info.value)
    assert "sergeyzh/BERTA" in msg and "no cached copy" in msg and "local model folder" in msg


def test_hub_id_resolves_to_a_cached_snapshot_offline(tiny_bert_dir, tmp_path, monkeypatch):
    """The real huggingface_hub path: a snapshot in the cache layout is found with no network."""
    for key, value in _offline_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    cache = tmp_path / "hf" / "hub"
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


def test_demo_offline_falls_back_to_packaged_minilm_and_says_so(tmp_path, minilm_dir):
    done = subprocess.run(
        [sys.executable, "-m", "berta_jax.cli", "demo"], capture_output=True, text=True, env=_offline_env(tmp_path),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("sergeyzh/BERTA unavailable") and "all-MiniLM-L6-v2" in lines[0]
    assert lines[1] == f"model: {minilm_dir}"
    printed = [float(line.split()[0]) for line in lines[2:5]]
    np.testing.assert_allclose(printed, card_cosines(Encoder.from_pretrained(minilm_dir)), atol=1e-6)


def test_demo_with_a_local_model(tiny_bert_dir):
    done = subprocess.run([sys.executable, "-m", "berta_jax.cli", "demo", "--model", str(tiny_bert_dir)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.splitlines()[0] == f"model: {tiny_bert_dir}"
    assert len(done.stdout.splitlines()) == 1 + len(CARD_PAIRS)


BERTA_DIR_VAR = "BERTA_JAX_BERTA_DIR"


@pytest.mark.skipif(
    not os.environ.get(BERTA_DIR_VAR),
    reason=f"needs the real sergeyzh/BERTA weights: set {BERTA_DIR_VAR}=/path/to/BERTA (a folder downloaded with "
    "`huggingface-cli download sergeyzh/BERTA --local-dir ...`) to check the model card's cosines",
)
def test_model_card_cosines_with_real_berta_weights():
    encoder = Encoder.from_pretrained(os.environ[BERTA_DIR_VAR])
    assert encoder.sentence.default_prompt_name == "categorize_entailment"
    cosines = card_cosines(encoder)
    np.testing.assert_allclose(cosines, [pair[-1] for pair in CARD_PAIRS], atol=1e-4)
    # the same through the prompt names, as the card's sentence-transformers example does
    q = encoder.encode_query([CARD_PAIRS[2][1]])[0]
    d = encoder.encode_document([CARD_PAIRS[2][3]])[0]
    assert abs(float(q @ d) - 0.7839136) <= 1e-4


def _parity(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "berta_jax", "parity", *args], capture_output=True, text=True,
                          timeout=300)


def test_parity_command_reports_every_layer_and_passes_on_a_faithful_port(minilm_dir):
    done = _parity("--model", str(minilm_dir))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert sum("hidden states max abs diff" in line for line in lines) == 7  # embeddings + 6 layers
    assert lines[-1] == "PASS"


def test_parity_command_finds_the_layer_a_bad_port_breaks(tiny_bert_dir, tmp_path):
    from berta_jax.convert.folders import hf_folder_to_flax
    from berta_jax.convert.safetensors_io import read_safetensors, write_safetensors

    folder = tmp_path / "m"
    shutil.copytree(tiny_bert_dir, folder)
    hf_folder_to_flax(folder, folder)  # berta-jax now reads flax_model.safetensors, PyTorch model.safetensors
    tensors, meta = read_safetensors(folder / "flax_model.safetensors")
    tensors = {k: np.array(v) for k, v in tensors.items()}
    tensors["layers.1.ffn_out.kernel"] *= 1.05  # a porting bug in the second layer
    write_safetensors(folder / "flax_model.safetensors", tensors, meta)
    done = _parity("--model", str(folder))
    assert done.returncode == 1 and done.stdout.splitlines()[-1].startswith("FAIL")
    diffs = [float(line.split()[-1]) for line in done.stdout.splitlines() if "hidden states max abs diff" in line]
    assert diffs[0] < 1e-5 and diffs[1] < 1e-5 and diffs[2] > 1e-4  # exact up to layer 1, broken at layer 2


def test_parity_command_on_a_berta_jax_only_folder(tiny_bert_dir, tmp_path):
    """A model fine-tuned and saved in JAX holds flax_model.safetensors only: PyTorch gets a converted copy."""
    from berta_jax.convert.folders import hf_folder_to_flax

    hf_folder_to_flax(tiny_bert_dir, tmp_path / "flax-only")
    assert not (tmp_path / "flax-only" / "model.safetensors").exists()
    done = _parity("--model", str(tmp_path / "flax-only"))
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "PASS", done.stderr[-2000:]
    diffs = [float(line.split()[-1]) for line in done.stdout.splitlines() if "hidden states max abs diff" in line]
    assert len(diffs) == 3 and max(diffs) < 1e-5


def test_parity_texts_file_errors_name_the_line(tiny_bert_dir, tmp_path):
    bad = tmp_path / "texts.txt"
    bad.write_bytes("ok\nтоже ok\n".encode() + b"bad \xff byte\n")
    done = _parity("--model", str(tiny_bert_dir), "--texts", str(bad))
    assert done.returncode == 2 and "line 3: not valid UTF-8" in done.stderr
