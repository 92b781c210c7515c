"""Class E: nothing leaks out of a folder. No path read from a model folder's JSON may leave it; `convert` copies
only regular files inside the source (a link that leaves it is skipped with a warning naming it) and never
gives a copy wider permissions than its source."""

from __future__ import annotations

import json
import shutil
import stat

import pytest

from berta_jax import BertaJaxError, Encoder
from berta_jax.convert.folders import hf_folder_to_flax


@pytest.fixture
def model(tiny_bert_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    return folder


def test_convert_skips_links_that_leave_the_source_and_keeps_permissions(model, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    secret.chmod(0o600)
    (model / "notes.txt").symlink_to(secret)
    (model / "1_Pooling" / "elsewhere.json").symlink_to(secret)
    private = model / "tokenizer_config.json"
    private.chmod(0o600)
    with pytest.warns(RuntimeWarning) as warned:
        hf_folder_to_flax(model, tmp_path / "out")
    messages = " ".join(str(w.message) for w in warned)
    assert "notes.txt: not copied" in messages and "elsewhere.json: not copied" in messages
    assert not (tmp_path / "out" / "notes.txt").exists() and not (tmp_path / "out" / "1_Pooling" / "elsewhere.json").exists()
    assert stat.S_IMODE((tmp_path / "out" / "tokenizer_config.json").stat().st_mode) & 0o077 == 0
    assert Encoder.from_pretrained(tmp_path / "out").encode(["ok"]).shape == (1, 16)


@pytest.mark.parametrize("path", ["../elsewhere", "/etc", "1_Pooling/../../x", "..\\\\x"])
def test_a_module_path_may_not_leave_the_folder(model, path):
    modules = json.loads((model / "modules.json").read_text())
    modules[1]["path"] = path
    (model / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(BertaJaxError, match="would leave the model folder"):
        Encoder.from_pretrained(model)


@pytest.mark.parametrize("shard", ["../../other/model.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_a_shard_index_may_not_name_files_outside_the_folder(model, shard):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(model / "model.safetensors"))
    (model / "model.safetensors").unlink()
    save_file(tensors, str(model / "model-00001.safetensors"), metadata={"format": "pt"})
    index = {"weight_map": {name: "model-00001.safetensors" for name in tensors}}
    index["weight_map"][next(iter(tensors))] = shard
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(BertaJaxError, match="would leave the model folder"):
        Encoder.from_pretrained(model)
