"""`dtype="auto"`: bfloat16 where the hardware multiplies it natively, float32 elsewhere, and always a reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from berta_jax import Encoder
from berta_jax.runtime.dtypes import choose_dtype, cpu_bf16_unit
from tests.helpers import berta_jax


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 {flags}\n\n")
    return path


@pytest.mark.parametrize("flags, dtype, reason", [
    ("avx512f amx_tile amx_bf16 amx_int8", "bfloat16", "CPU flag amx_bf16"),
    ("avx512f avx512_bf16", "bfloat16", "CPU flag avx512_bf16"),
    ("avx512f avx512_vnni", "float32", "no amx_bf16 or avx512_bf16 on every processor in"),
    ("", "float32", "would run slower than float32"),
])
def test_auto_on_a_cpu_follows_its_bf16_flags(tmp_path, flags, dtype, reason):
    choice = choose_dtype("auto", "cpu", _cpuinfo(tmp_path, flags))
    assert choice.name == dtype and reason in choice.reason and choice.reason.startswith("auto: ")


def test_auto_needs_the_bf16_flag_on_every_processor_not_on_any_line(tmp_path):
    """A process may run on any processor: one processor's flag (or the word in a model name or a bugs line) is not
    a bf16 unit for all of them."""
    block = "processor\t: {i}\nmodel name\t: avx512_bf16 edition\nflags\t\t: fpu avx2 {flags}\nbugs\t\t: amx_bf16\n\n"
    path = tmp_path / "cpuinfo"
    path.write_text(block.format(i=0, flags="avx512_bf16") + block.format(i=1, flags="avx512f"))
    assert choose_dtype("auto", "cpu", path).name == "float32"
    path.write_text("".join(block.format(i=i, flags="avx512f avx512_bf16") for i in range(4)))
    choice = choose_dtype("auto", "cpu", path)
    assert choice.name == "bfloat16" and "avx512_bf16 on all 4 processors" in choice.reason


def test_auto_falls_back_to_float32_saying_why_when_the_cpu_cannot_be_read(tmp_path):
    choice = choose_dtype("auto", "cpu", tmp_path / "missing")
    assert choice.name == "float32" and "cannot read" in choice.reason and "missing" in choice.reason
    assert cpu_bf16_unit(tmp_path / "missing")[0] is None


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_auto_on_an_accelerator_is_bfloat16(platform):
    assert choose_dtype("auto", platform).name == "bfloat16"


def test_a_named_dtype_is_kept_and_a_wrong_one_is_refused():
    assert choose_dtype("float32", "tpu").name == "float32" and choose_dtype("bfloat16", "cpu").reason == "asked for"
    with pytest.raises(ValueError, match="'bf16'.*choose 'auto' or one of float32, bfloat16, float16"):
        choose_dtype("bf16", "cpu")


def test_an_encoder_built_around_a_model_reports_the_model_s_own_dtype(tiny_bert_dir):
    """Built from a bfloat16 model directly (no from_folder choice), compile_stats says bfloat16, not float32."""
    fast = Encoder.from_pretrained(tiny_bert_dir, dtype="bfloat16")
    rebuilt = Encoder(fast.model, fast.tokenizer, fast.sentence)
    assert rebuilt.compile_stats.dtype == "bfloat16" and fast.compile_stats.dtype == "bfloat16 (asked for)"


def test_the_encoder_and_the_job_report_say_what_auto_chose(tiny_bert_dir, tmp_path):
    want = choose_dtype("auto", "cpu")  # this machine's own answer
    encoder = Encoder.from_pretrained(tiny_bert_dir, dtype="auto")
    assert encoder.compile_stats.dtype == str(want)
    assert encoder.model.layers.attention.dtype == want.name
    assert Encoder.from_pretrained(tiny_bert_dir).compile_stats.dtype == "float32 (asked for)"
    (tmp_path / "in.txt").write_text("Кот\nA dog.\n")
    done = berta_jax("encode", str(tmp_path / "in.txt"), "-o", str(tmp_path / "out.npy"), "--model",
                     str(tiny_bert_dir), "--dtype", "auto")
    assert f"compute dtype {want}" in done.stdout
