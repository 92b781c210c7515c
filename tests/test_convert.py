"""The converter: HF <-> Flax round trips, accepted layouts, and every refusal naming its culprit."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from berta_jax import CheckpointError, ConfigError, Encoder, flat_params
from berta_jax.models.bert import names as mapping
from berta_jax.convert.checkpoint import flax_to_hf
from berta_jax.convert.folders import flax_folder_to_hf, hf_folder_to_flax
from tests.checkpoints import random_bert_state


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert _bytes(a[k]) == _bytes(b[k]), f"{k} differs"


def _copy(folder: Path, tmp_path: Path, name: str = "model") -> Path:
    dst = tmp_path / name
    shutil.copytree(folder, dst)
    return dst


def _rewrite_weights(folder: Path, edit) -> None:
    """Load model.safetensors as torch tensors, let `edit` change the dict, save it back."""
    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


# --- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_is_bit_exact_for_each_storage_dtype(tiny_bert_dir, tmp_path, dtype):
    src = _copy(tiny_bert_dir, tmp_path)
    _rewrite_weights(src, lambda t: t.update({k: v.to(dtype) for k, v in t.items()}))
    hf_folder_to_flax(src, tmp_path / "flax")
    flax_folder_to_hf(tmp_path / "flax", tmp_path / "back")
    _same_tensors(load_file(str(src / "model.safetensors")), load_file(str(tmp_path / "back" / "model.safetensors")))


def test_round_trip_of_real_minilm_keeps_every_tensor(minilm_dir, tmp_path):
    hf_folder_to_flax(minilm_dir, tmp_path / "flax")
    flax_folder_to_hf(tmp_path / "flax", tmp_path / "back")
    original = load_file(str(minilm_dir / "model.safetensors"))
    assert "embeddings.position_ids" in original  # an int64 buffer, carried through untouched
    _same_tensors(original, load_file(str(tmp_path / "back" / "model.safetensors")))


def test_flax_file_holds_transposed_kernels_under_flax_names(tiny_bert_dir, tmp_path):
    from berta_jax.convert.safetensors_io import read_safetensors

    hf_folder_to_flax(tiny_bert_dir, tmp_path / "flax")
    flax, meta = read_safetensors(tmp_path / "flax" / "flax_model.safetensors")
    hf = load_file(str(tiny_bert_dir / "model.safetensors"))
    assert meta["format"] == "berta_jax"
    np.testing.assert_array_equal(
        flax["layers.1.ffn_in.kernel"], hf["encoder.layer.1.intermediate.dense.weight"].numpy().T
    )
    np.testing.assert_array_equal(flax["embeddings.norm.scale"], hf["embeddings.LayerNorm.weight"].numpy())


def test_converted_folder_is_self_contained_and_loads_without_torch(tiny_bert_dir, tmp_path):
    out = tmp_path / "flax"
    hf_folder_to_flax(tiny_bert_dir, out)
    for name in ("config.json", "tokenizer.json", "modules.json", "1_Pooling/config.json",
                 "sentence_bert_config.json", "config_sentence_transformers.json"):
        assert (out / name).is_file(), name
    assert not (out / "model.safetensors").exists()
    texts = ["Привет, мир", "hello world", ""]
    expected = Encoder.from_pretrained(tiny_bert_dir).encode(texts)
    script = (
        "import sys, json; sys.modules['torch'] = None\n"
        "from berta_jax import Encoder\n"
        f"e = Encoder.from_pretrained({str(out)!r}).encode({texts!r})\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
        "print(json.dumps(e.tolist()))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    np.testing.assert_array_equal(np.array(json.loads(done.stdout.splitlines()[-1]), np.float32), expected)


def test_a_folder_with_both_layouts_loads_the_converted_weights(tiny_bert_dir, tmp_path):
    """convert never writes into its source, but a folder may hold both files (copied there): berta-jax reads
    flax_model.safetensors, PyTorch model.safetensors."""
    src = _copy(tiny_bert_dir, tmp_path)
    hf_folder_to_flax(src, tmp_path / "flax")
    shutil.copy(tmp_path / "flax" / "flax_model.safetensors", src / "flax_model.safetensors")
    assert Encoder.from_pretrained(src).encode(["x"]).shape == (1, 16)
    with pytest.raises(CheckpointError, match="is the source folder"):
        hf_folder_to_flax(src, src)


# --- accepted layouts ------------------------------------------------------------------------------


def test_bert_prefix_and_heads_of_a_pretraining_checkpoint(tiny_bert_dir, tmp_path):
    """A BertForPreTraining-style file: `bert.` encoder keys plus `cls.*` heads (ignored by name)."""
    src = _copy(tiny_bert_dir, tmp_path)

    def add_prefix(t):
        for k in list(t):
            t["bert." + k] = t.pop(k)
        t["cls.predictions.bias"] = torch.zeros(10)
        t["cls.predictions.transform.dense.weight"] = torch.ones(16, 16)

    _rewrite_weights(src, add_prefix)
    np.testing.assert_array_equal(
        Encoder.from_pretrained(src).encode(["тест"]), Encoder.from_pretrained(tiny_bert_dir).encode(["тест"])
    )
    hf_folder_to_flax(src, tmp_path / "flax")
    flax_folder_to_hf(tmp_path / "flax", tmp_path / "back")
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert "cls.predictions.bias" in back and "embeddings.word_embeddings.weight" in back


def test_sentence_transformers_module_prefix(tiny_bert_dir, tmp_path):
    src = _copy(tiny_bert_dir, tmp_path)

    def add_prefix(t):
        for k in list(t):
            t["0.auto_model." + k] = t.pop(k)

    _rewrite_weights(src, add_prefix)
    np.testing.assert_array_equal(
        Encoder.from_pretrained(src).encode(["тест"]), Encoder.from_pretrained(tiny_bert_dir).encode(["тест"])
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_storage_is_upcast_exactly(tiny_bert_dir, tmp_path, dtype):
    src = _copy(tiny_bert_dir, tmp_path)
    _rewrite_weights(src, lambda t: t.update({k: v.to(dtype) for k, v in t.items()}))
    stored = load_file(str(src / "model.safetensors"))
    loaded = flax_to_hf(flat_params(Encoder.from_pretrained(src).model))
    for name, array in loaded.items():
        assert array.dtype == np.float32
        np.testing.assert_array_equal(array, stored[name].float().numpy(), err_msg=name)


def test_sharded_checkpoint_loads_like_the_single_file(tiny_bert_dir, tmp_path):
    cfg_kwargs = json.loads((tiny_bert_dir / "config.json").read_text())
    _, model = random_bert_state({k: cfg_kwargs[k] for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "max_position_embeddings")}, seed=7)
    sharded = _copy(tiny_bert_dir, tmp_path)
    (sharded / "model.safetensors").unlink()
    model.save_pretrained(str(sharded), safe_serialization=True, max_shard_size="200KB")
    assert (sharded / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    np.testing.assert_array_equal(
        Encoder.from_pretrained(sharded).encode(["ab cd"]), Encoder.from_pretrained(tiny_bert_dir).encode(["ab cd"])
    )


def test_legacy_gamma_beta_layer_norm_names(tiny_bert_dir, tmp_path):
    src = _copy(tiny_bert_dir, tmp_path)

    def legacy(t):
        for k in list(t):
            if "LayerNorm" in k:
                t[k.replace(".weight", ".gamma").replace(".bias", ".beta")] = t.pop(k)

    _rewrite_weights(src, legacy)
    np.testing.assert_array_equal(
        Encoder.from_pretrained(src).encode(["x y"]), Encoder.from_pretrained(tiny_bert_dir).encode(["x y"])
    )


# --- refusals ------------------------------------------------------------------------------------------


def _load_error(folder: Path, error=CheckpointError) -> str:
    with pytest.raises(error) as info:
        Encoder.from_pretrained(folder)
    return str(info.value)


def test_missing_keys_are_all_named(tiny_bert_dir, tmp_path):
    src = _copy(tiny_bert_dir, tmp_path)
    _rewrite_weights(src, lambda t: [t.pop("encoder.layer.1.output.dense.bias"), t.pop("embeddings.LayerNorm.weight")])
    msg = _load_error(src)
    assert "missing" in msg and str(src / "model.safetensors") in msg
    assert "encoder.layer.1.output.dense.bias (layers.1.ffn_out.bias)" in msg
    assert "embeddings.LayerNorm.weight (embeddings.norm.scale)" in msg


def test_unexpected_keys_are_all_named(tiny_bert_dir, tmp_path):
    src = _copy(tiny_bert_dir, tmp_path)
    _rewrite_weights(src, lambda t: t.update({"encoder.layer.0.adapter.weight": torch.ones(2),
                                              "lm_head.weight": torch.ones(2)}))
    msg = _load_error(src)
    assert "encoder.layer.0.adapter.weight" in msg and "lm_head.weight" in msg


def test_config_that_does_not_match_the_weights(tiny_bert_dir, tmp_path):
    src = _copy(tiny_bert_dir, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["intermediate_size"], cfg["num_hidden_layers"] = 20, 3
    (src / "config.json").write_text(json.dumps(cfg))
    msg = _load_error(src)
    assert "config.json says intermediate_size=20, num_hidden_layers=3; the weights have intermediate_size=24, " \
           "num_hidden_layers=2" in msg
    assert "encoder.layer.0.intermediate.dense.weight" in msg and "checkpoint (24, 16) vs expected (20, 16)" in msg
    assert "missing parameter(s): encoder.layer.2." in msg  # the third layer is missing from the weights


def test_mixed_prefixes_are_ambiguous(tiny_bert_dir, tmp_path):
    src = _copy(tiny_bert_dir, tmp_path)
    _rewrite_weights(src, lambda t: t.update({"bert.embeddings.word_embeddings.weight": t["embeddings.word_embeddings.weight"].clone()}))
    assert "more than one prefix" in _load_error(src)


def test_nan_in_weights_names_the_tensor(tiny_bert_dir, tmp_path):
    src = _copy(tiny_bert_dir, tmp_path)

    def poison(t):
        t["encoder.layer.0.attention.self.key.weight"][3, 4] = float("nan")

    _rewrite_weights(src, poison)
    msg = _load_error(src)
    assert "NaN or Inf" in msg and "encoder.layer.0.attention.self.key.weight" in msg


def test_integer_weights_are_refused(tiny_bert_dir, tmp_path):
    src = _copy(tiny_bert_dir, tmp_path)
    _rewrite_weights(src, lambda t: t.update({"embeddings.token_type_embeddings.weight": torch.ones(2, 16, dtype=torch.int32)}))
    assert "non-floating" in (msg := _load_error(src)) and "embeddings.token_type_embeddings.weight" in msg


def test_pickle_only_checkpoint_is_refused(tiny_bert_dir, tmp_path):
    src = _copy(tiny_bert_dir, tmp_path)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    msg = _load_error(src)
    assert "pytorch_model.bin" in msg and "pickle" in msg and "save_pretrained" in msg


def test_auto_map_custom_code_is_refused(tiny_bert_dir, tmp_path):
    src = _copy(tiny_bert_dir, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (src / "config.json").write_text(json.dumps(cfg))
    assert "auto_map" in _load_error(src, ConfigError)


_DUPLICATE = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'


def _raw_safetensors(header: dict, data: bytes) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS pointer"),
        (b"\x05\x00", "truncated"),
        (struct.pack("<Q", 10**9) + b"{}", "over the"),
        (struct.pack("<Q", 50) + b"{}", "truncated: the header needs 58 bytes"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "not valid UTF-8 JSON"),
        (_raw_safetensors({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8), "truncated: tensors need 16"),
        (_raw_safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12), "4 unexpected trailing bytes"),
        (_raw_safetensors({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), "does not match shape [3]"),
        (_raw_safetensors({"a": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2), "dtype F8_E4M3"),
        (_raw_safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12), "overlaps"),
        (struct.pack("<Q", len(_DUPLICATE)) + _DUPLICATE + b"\0" * 4, "duplicate tensor name 'a'"),
        (struct.pack("<Q", 9) + b"not json!", "not valid UTF-8 JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (_raw_safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "gap of 4 bytes"),
        (_raw_safetensors({"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, b"\0" * 8),
         "too large to represent"),
        (_raw_safetensors({"a": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 8]}}, b"\0" * 8),
         "does not match"),
        # found by the structured fuzzer: an empty tensor whose other dimensions no array library can represent
        (_raw_safetensors({"a": {"dtype": "F32", "shape": [0, 2**31, 2**32], "data_offsets": [0, 0]}}, b""),
         "too large to represent"),
    ],
)
def test_corrupt_weight_files_are_named(tiny_bert_dir, tmp_path, content, expected):
    src = _copy(tiny_bert_dir, tmp_path)
    (src / "model.safetensors").write_bytes(content)
    msg = _load_error(src)
    assert expected in msg and "model.safetensors" in msg


def test_truncated_real_checkpoint_reports_sizes(tiny_bert_dir, tmp_path):
    src = _copy(tiny_bert_dir, tmp_path)
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) - 1000])
    msg = _load_error(src)
    assert "truncated" in msg and f"holds {len(data) - 1000 - 8 - struct.unpack('<Q', data[:8])[0]}" in msg


def _make_sharded(tiny_bert_dir: Path, tmp_path: Path) -> Path:
    src = _copy(tiny_bert_dir, tmp_path)
    tensors = load_file(str(src / "model.safetensors"))
    (src / "model.safetensors").unlink()
    names = sorted(tensors)
    half = len(names) // 2
    for shard, part in (("a.safetensors", names[:half]), ("b.safetensors", names[half:])):
        save_file({k: tensors[k] for k in part}, str(src / shard), metadata={"format": "pt"})
    index = {"weight_map": {k: "a.safetensors" if i < half else "b.safetensors" for i, k in enumerate(names)}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    return src


def test_sharded_index_problems_are_caught_before_loading(tiny_bert_dir, tmp_path):
    src = _make_sharded(tiny_bert_dir, tmp_path)
    assert Encoder.from_pretrained(src).encode(["ok"]).shape == (1, 16)
    index_path = src / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())

    wrong = dict(index["weight_map"])
    key = next(k for k, v in wrong.items() if v == "a.safetensors")
    wrong[key] = "b.safetensors"
    index_path.write_text(json.dumps({"weight_map": wrong}))
    assert f"{key} is indexed in b.safetensors but found in a.safetensors" in _load_error(src)

    missing = dict(index["weight_map"], **{key: "c.safetensors"})
    index_path.write_text(json.dumps({"weight_map": missing}))
    assert "c.safetensors" in _load_error(src)

    index_path.write_text(json.dumps(index))
    tensors_b = load_file(str(src / "b.safetensors"))
    tensors_b[key] = load_file(str(src / "a.safetensors"))[key]
    save_file(tensors_b, str(src / "b.safetensors"), metadata={"format": "pt"})
    assert f"{key} is in both a.safetensors and b.safetensors" in _load_error(src)


def test_an_overwrite_into_a_converted_folder_leaves_no_stale_weights_file(tiny_bert_dir, tmp_path):
    """--to hf --overwrite into a berta-jax folder: its flax_model.safetensors would be loaded instead of the new
    model.safetensors (transformers reads the new one): the two loaders must see the same weights."""
    from berta_jax.convert.checkpoint import read_params
    from berta_jax.storage.model_files import ModelFiles
    from tests.checkpoints import make_random_bert

    other = tmp_path / "other"
    make_random_bert(other, seed=11, hidden_size=16, num_attention_heads=2, num_hidden_layers=2, intermediate_size=24,
                     max_position_embeddings=32)
    hf_folder_to_flax(tiny_bert_dir, tmp_path / "dst")
    hf_folder_to_flax(other, tmp_path / "other_flax")
    flax_folder_to_hf(tmp_path / "other_flax", tmp_path / "dst", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "dst").glob("*.safetensors")) == ["model.safetensors"]
    ours, expected = read_params(ModelFiles(tmp_path / "dst"))[0], read_params(ModelFiles(other))[0]
    assert sorted(ours) == sorted(expected) and all(np.array_equal(ours[k], expected[k]) for k in ours)


def test_mapping_table_is_a_bijection_over_a_model(tiny_bert_dir):
    from berta_jax import BertConfig, param_shapes

    shapes = param_shapes(BertConfig.from_json(tiny_bert_dir / "config.json"))
    hf_names = {mapping.flax_to_hf_name(p)[0] for p in shapes}
    assert len(hf_names) == len(shapes)
    assert all(mapping.hf_to_flax_name(n)[0] in shapes for n in hf_names)
    assert set(load_file(str(tiny_bert_dir / "model.safetensors"))) - hf_names == {
        "pooler.dense.weight", "pooler.dense.bias"} | ({"embeddings.position_ids"} & set(load_file(str(tiny_bert_dir / "model.safetensors"))))


@pytest.mark.slow  # the CLI in subprocesses; test_cli converts both ways in process in the default run
def test_cli_convert_both_ways_and_clean_errors(tiny_bert_dir, tmp_path):
    cli = [sys.executable, "-m", "berta_jax.cli", "convert"]
    subprocess.run([*cli, str(tiny_bert_dir), str(tmp_path / "f")], check=True, capture_output=True)
    subprocess.run([*cli, "--to", "hf", str(tmp_path / "f"), str(tmp_path / "h")], check=True, capture_output=True)
    _same_tensors(load_file(str(tiny_bert_dir / "model.safetensors")), load_file(str(tmp_path / "h" / "model.safetensors")))
    bad = subprocess.run([*cli, str(tmp_path / "nothing"), str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2 and "config.json: file not found" in bad.stderr and "Traceback" not in bad.stderr
    again = subprocess.run([*cli, str(tiny_bert_dir), str(tmp_path / "f")], capture_output=True, text=True)
    assert again.returncode == 2 and "exists and is not empty; pass --overwrite" in again.stderr
