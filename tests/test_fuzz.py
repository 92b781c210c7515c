"""Hypothesis: the checkpoint reader under mutated files, and encoder properties under random inputs.

Bounded for CI (seconds); raise HYPOTHESIS_PROFILE=thorough for a longer search.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError
from safetensors.torch import load as torch_load
from safetensors.numpy import save as reference_save

from berta_jax import CheckpointError, Encoder
from berta_jax.convert.safetensors_io import read_safetensors
from tests.helpers import REPO, WORKERS

settings.register_profile("ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("thorough", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_DTYPES = [np.float32, np.float16, np.int64, np.uint8]


@st.composite
def safetensors_bytes(draw) -> bytes:
    n = draw(st.integers(0, 4))
    tensors = {}
    for i in range(n):
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        dtype = draw(st.sampled_from(_DTYPES))
        tensors[f"t{i}.{draw(st.sampled_from(['weight', 'bias']))}"] = (
            np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape).astype(dtype)
        )
    return reference_save(tensors)


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(safetensors_bytes()))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "append", "length"]))
        if kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif kind == "append":
            data += draw(st.binary(max_size=16))
        elif kind == "length" and len(data) >= 8:
            data[:8] = draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
    return bytes(data)


@st.composite
def structurally_mutated(draw) -> bytes:
    """Valid JSON headers with wrong contents (offsets, shapes, dtypes, names, metadata): the semantic checks
    that random byte flips rarely reach, since a flip mostly breaks the JSON itself."""
    data = draw(safetensors_bytes())
    n = int.from_bytes(data[:8], "little")
    header, body = json.loads(data[8:8 + n]), data[8 + n:]
    for _ in range(draw(st.integers(1, 3))):
        names = [k for k in header if k != "__metadata__"]
        kind = draw(st.sampled_from(["offset", "shape", "dtype", "drop", "copy", "metadata", "body"]))
        name = draw(st.sampled_from(names)) if names else None
        if kind == "offset" and name:
            which = draw(st.integers(0, 1))
            header[name]["data_offsets"][which] += draw(st.integers(-9, 9))
        elif kind == "shape" and name:
            header[name]["shape"] = draw(st.lists(st.one_of(st.integers(0, 5), st.integers(2**31, 2**62)), max_size=4))
        elif kind == "dtype" and name:
            header[name]["dtype"] = draw(st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "F64", "BOOL",
                                                          "F8_E4M3", "X9", ""]))
        elif kind == "drop" and name:
            del header[name]
        elif kind == "copy" and name:
            header[name + "_copy"] = dict(header[name])  # two tensors over the same bytes: overlap
        elif kind == "metadata":
            header["__metadata__"] = draw(st.sampled_from([{"format": "pt"}, {"k": 1}, [], "x"]))
        elif kind == "body":
            body = body[: draw(st.integers(0, len(body)))] + draw(st.binary(max_size=8))
    blob = json.dumps(header).encode()
    return len(blob).to_bytes(8, "little") + blob + body


def reference_load(data: bytes) -> dict[str, np.ndarray]:
    """The safetensors library's reading (its torch loader: numpy has no bfloat16), as float32 for BF16."""
    import torch

    return {k: (t.float() if t.dtype == torch.bfloat16 else t).numpy() for k, t in torch_load(data).items()}


def _check_against_reference(data: bytes, path) -> None:
    path.write_bytes(data)
    tracemalloc.start()
    try:
        ours, _ = read_safetensors(path)
    except CheckpointError as e:
        assert str(path) in str(e)  # the error names the file
        return
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak <= 1_000_000 + 4 * len(data), f"{peak} bytes allocated to read a {len(data)}-byte file"
    reference = reference_load(data)  # whatever we accept, the reference library reads the same way
    assert sorted(ours) == sorted(reference)
    for name, array in ours.items():
        if array.dtype.name == "bfloat16":
            array = array.astype(np.float32)  # exact
        assert array.dtype == reference[name].dtype and array.shape == reference[name].shape
        assert np.array_equal(array, reference[name], equal_nan=array.dtype.kind == "f")


@given(data=safetensors_bytes())
def test_valid_files_read_exactly_as_the_safetensors_library(tmp_path, data):
    path = tmp_path / "valid.safetensors"
    path.write_bytes(data)
    ours, _ = read_safetensors(path)
    assert sorted(ours) == sorted(reference_load(data))
    _check_against_reference(data, path)


@given(data=st.one_of(mutated(), structurally_mutated()))
def test_mutated_files_load_identically_or_fail_with_a_named_error(tmp_path, data):
    path = tmp_path / "mutated.safetensors"
    _check_against_reference(data, path)
    try:
        torch_load(data)
        library_accepts = True
    except (SafetensorError, RuntimeError):  # RuntimeError: torch cannot build the (empty but huge) tensor
        library_accepts = False
    if not library_accepts:  # never looser than the reference
        with pytest.raises(CheckpointError):
            read_safetensors(path)


# --- encoder properties ----------------------------------------------------------------------------------

_ALPHABET = st.sampled_from(list("abcxyz АБВабвгдеёжзийклмн .,!?-—\n\t") + ["  ", "Москва", "hello"])
_TEXT = st.lists(_ALPHABET, max_size=25).map("".join)


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    return Encoder.from_pretrained(tiny_bert_dir)


@pytest.fixture(scope="module")
def tiny_unpacked(tiny_bert_dir):
    return Encoder.from_pretrained(tiny_bert_dir, packing=False)


@settings(max_examples=25)
@given(texts=st.lists(_TEXT, min_size=1, max_size=9), seed=st.integers(0, 2**16))
def test_permuting_inputs_permutes_outputs(tiny, texts, seed):
    order = np.random.default_rng(seed).permutation(len(texts))
    out = tiny.encode(texts)
    shuffled = tiny.encode([texts[i] for i in order])
    assert np.abs(shuffled - out[order]).max() <= 1e-6


@settings(max_examples=25)
@given(texts=st.lists(_TEXT, min_size=1, max_size=9), batch_size=st.integers(1, 9), extra=st.lists(_TEXT, max_size=5))
def test_batch_size_and_company_do_not_change_embeddings(tiny, texts, batch_size, extra):
    alone = tiny.encode(texts)
    together = tiny.encode(extra + texts, batch_size=batch_size)[len(extra):]
    assert np.abs(together - alone).max() <= 1e-6


@settings(max_examples=25)
@given(text=_TEXT, copies=st.integers(2, 5), others=st.lists(_TEXT, max_size=4))
def test_duplicated_texts_give_identical_rows(tiny, tiny_unpacked, text, copies, others):
    """One text per row: copies are bit-identical. Packed, copies sit at different offsets of a row, and float32
    sums over the row group their terms differently: equal within the bound any company effect must meet (1e-6)."""
    out = tiny.encode([text] * copies + others)
    assert all(np.abs(out[0] - out[i]).max() <= 1e-6 for i in range(1, copies))
    unpacked = tiny_unpacked.encode([text] * copies + others)
    assert all(np.array_equal(unpacked[0], unpacked[i]) for i in range(1, copies))


@settings(max_examples=25)
@given(texts=st.lists(_TEXT, min_size=1, max_size=9), normalize=st.booleans())
def test_outputs_are_finite_and_unit_norm_when_normalised(tiny, texts, normalize):
    out = tiny.encode(texts, normalize=normalize)
    assert np.isfinite(out).all()
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


# --- crash injection: kill -9 a writer at random moments ----------------------------------------------------

def _kill_repeatedly(args: list[str], target: Path, check_whole, *, rounds: int, seed: int) -> None:
    """Run the write_loop worker (a writer looping over `target`), kill -9 it at a random moment, check what is
    there."""
    rng = np.random.default_rng(seed)
    for round in range(rounds):
        proc = subprocess.Popen([sys.executable, str(WORKERS / "write_loop.py"), *args], stdout=subprocess.PIPE,
                                text=True, cwd=REPO)
        assert proc.stdout.readline().strip() == "ready"
        if round == rounds - 1:  # the last kill comes after a first whole write, however slow the machine
            assert proc.stdout.readline().strip() == "wrote"
        time.sleep(0.2 + rng.random() * 0.7)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if target.exists():
            check_whole(target)
    assert target.exists()


def test_kill_9_during_writes_leaves_a_whole_file(tmp_path):
    def whole(target: Path) -> None:  # never torn: a complete old or new file
        tensors, _ = read_safetensors(target)
        assert tensors["w"].shape == (4_000_000,) and len(np.unique(tensors["w"])) == 1

    target = tmp_path / "model.safetensors"
    _kill_repeatedly(["safetensors", str(target)], target, whole, rounds=5, seed=0)


def test_kill_9_during_side_file_copies_leaves_a_whole_file(tmp_path):
    """Converters copy tokenizer and config files with storage.copy_file: a kill leaves one whole version."""
    sources = [tmp_path / "a.json", tmp_path / "b.json"]
    for i, source in enumerate(sources):
        source.write_bytes(bytes([ord("a") + i]) * 16_000_000)
    versions = {source.read_bytes() for source in sources}

    def whole(target: Path) -> None:
        assert target.read_bytes() in versions

    target = tmp_path / "out" / "tokenizer.json"
    _kill_repeatedly(["copy", str(target), *map(str, sources)], target, whole, rounds=4, seed=1)
