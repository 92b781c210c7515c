"""Attention kernels: which one each backend gets, that the fused calls (cuDNN's, splash's) compute what the explicit
one does, and that an automatic fused choice that cannot compile falls back to the explicit kernel and says so."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from berta_jax import Encoder
from berta_jax.models.attention import attention_bias, explicit_attention, fused_attention, select_kernel, splash_attention
from berta_jax.runtime.compiled import Runtime
from tests.helpers import cli_env, worker
from tests.texts import MIXED


@pytest.mark.parametrize("requested, platform, dtype, kernel", [
    ("auto", "cpu", jnp.float32, "xla"),
    ("auto", "cpu", jnp.bfloat16, "xla"),
    ("auto", "tpu", jnp.bfloat16, "splash"),
    ("auto", "tpu", jnp.float32, "xla"),  # splash multiplies at the TPU's default (bf16-pass) precision
    ("auto", "gpu", jnp.float32, "xla"),  # cuDNN's fused attention has no float32 mode; float32 is the parity mode
    ("auto", "gpu", jnp.bfloat16, "cudnn"),
    ("auto", "gpu", jnp.float16, "cudnn"),
    ("xla", "gpu", jnp.bfloat16, "xla"),
    ("cudnn", "gpu", jnp.bfloat16, "cudnn"),
    ("splash", "tpu", jnp.bfloat16, "splash"),
])
def test_each_backend_gets_its_kernel(requested, platform, dtype, kernel):
    assert select_kernel(requested, platform, dtype).name == kernel


@pytest.mark.parametrize("requested, platform, dtype, message", [
    ("cudnn", "cpu", jnp.bfloat16, "needs an NVIDIA GPU"),
    ("cudnn", "gpu", jnp.float32, "bfloat16/float16 compute"),
    ("splash", "gpu", jnp.bfloat16, "needs a TPU"),
    ("splash", "tpu", jnp.float32, "bfloat16/float16 compute"),
    ("flash", "gpu", jnp.bfloat16, "is not a kernel"),
])
def test_a_kernel_the_backend_cannot_run_is_a_clear_error(requested, platform, dtype, message):
    with pytest.raises(ValueError, match=message):
        select_kernel(requested, platform, dtype)


def _qkv(batch=3, length=12, heads=2, dim=8, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return [jax.random.normal(k, (batch, length, heads, dim), jnp.float32) for k in keys]


@pytest.mark.parametrize("packed", [False, True])
def test_the_fused_call_computes_the_explicit_attention(packed):
    """The arguments berta-jax gives jax.nn.dot_product_attention (layout, scale, the full [B, 1, L, L] bias), run
    here through JAX's XLA implementation of that call; on a GPU the same call runs cuDNN's kernel."""
    q, k, v = _qkv()
    lengths = np.array([12, 7, 1])
    mask = np.arange(12)[None, :] < lengths[:, None]
    segments = np.where(mask, 1, 0) if not packed else np.array([[1] * 5 + [2] * 4 + [3] * 3, [1] * 7 + [0] * 5,
                                                                  [1] + [2] * 10 + [0]])
    ref, _ = explicit_attention(q, k, v, attention_bias(jnp.asarray(segments > 0), jnp.asarray(segments) if packed
                                                        else None), precision=jax.lax.Precision.HIGHEST)
    full = attention_bias(jnp.asarray(segments > 0), jnp.asarray(segments) if packed else None, full=True)
    assert full.shape == (3, 1, 12, 12)
    out = fused_attention(q, k, v, full, implementation="xla")
    real = segments > 0  # padding queries are never read
    assert np.abs(np.asarray(out)[real] - np.asarray(ref)[real]).max() <= 1e-6


def _segments(length: int) -> np.ndarray:
    """Three rows: three packed texts, one text and padding, one token then a long text then padding."""
    third = length // 3
    return np.array([[1] * third + [2] * third + [3] * (length - 2 * third),
                     [1] * (length - 5) + [0] * 5,
                     [1] + [2] * (length - 2) + [0]])


@pytest.mark.parametrize("length", [12, 300])  # under one 128-token tile; over two (padded to 384)
@pytest.mark.parametrize("packed", [False, True])
def test_splash_attention_computes_the_explicit_attention(length, packed):
    """The splash kernel as berta-jax calls it (layout, scale, segment ids, rows padded to the tile), run by the
    Pallas interpreter; on a TPU the same call compiles the Mosaic kernel. Equal on every token a text owns."""
    q, k, v = _qkv(length=length, heads=2, dim=16)
    segments = _segments(length)
    if not packed:
        segments = (segments > 0).astype(np.int32)
    ref, _ = explicit_attention(q, k, v, attention_bias(jnp.asarray(segments > 0), jnp.asarray(segments)),
                                precision=jax.lax.Precision.HIGHEST)
    out = splash_attention(q, k, v, jnp.asarray(segments), interpret=True)
    assert out.shape == q.shape
    real = segments > 0
    assert np.abs(np.asarray(out)[real] - np.asarray(ref)[real]).max() <= 1e-6


def test_splash_runs_in_a_shard_map_over_the_runtime_rows(tiny_bert_dir):
    """The whole model with splash, packed rows, four devices: the Runtime runs the kernel inside a shard_map over
    its row mesh (XLA cannot partition a Pallas TPU kernel) and gives the explicit kernel's embeddings; off TPU
    it says that it runs the Pallas interpreter (never a silent slow path)."""
    result = worker("splash_rows", str(tiny_bert_dir),
                    env=cli_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert result["devices"] == result["splash_devices"] == 4 and result["packed"]
    assert result["xla_shard_maps"] == [] and result["splash_shard_maps"]
    assert all(m == {"data": 4} for m in result["splash_shard_maps"])
    assert result["rows"] == len(MIXED)
    assert result["max_abs_diff"] <= 1e-6
    assert result["xla_warnings"] == []
    assert len(result["splash_warnings"]) == 1 and "runs in the Pallas interpreter" in result["splash_warnings"][0]


def test_an_automatic_fused_choice_that_cannot_compile_falls_back_and_says_so(tiny_bert_dir):
    """cuDNN cannot compile on this CPU: a runtime that chose it automatically warns, names the kernel it took, and
    gives the explicit kernel's numbers; one that was asked for it explicitly raises."""
    encoder = Encoder.from_pretrained(tiny_bert_dir)
    assert encoder.compile_stats.attention == "xla"
    expected = encoder.encode(MIXED)
    batches = encoder.prepare(MIXED, prompt=encoder.sentence.resolve_prompt(None, None)).batches
    runtime = Runtime(encoder.model, attention="cudnn", fallback=True)
    with pytest.warns(RuntimeWarning, match="the cudnn attention kernel did not compile here"):
        out = dict((tuple(b.texts), v) for b, v in runtime.run(batches, pooling="mean", normalize=True))
    assert runtime.stats.attention == "xla (cudnn unavailable)"
    got = np.zeros_like(expected)
    for texts, vectors in out.items():
        got[list(texts)] = vectors
    assert np.abs(got - expected).max() == 0.0
    strict = Runtime(encoder.model, attention="cudnn", fallback=False)
    with pytest.raises(Exception):
        next(strict.run(batches[:1], pooling="mean", normalize=True))
