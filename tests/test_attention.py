"""Attention kernels: which one each backend gets, that the fused call computes what the explicit one does, and that
an automatic fused choice that cannot compile falls back to the explicit kernel and says so."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from berta_jax import Encoder
from berta_jax.attention import attention_bias, explicit_attention, fused_attention, select_kernel
from berta_jax.runtime import Runtime
from tests.texts import MIXED


@pytest.mark.parametrize("requested, platform, dtype, kernel", [
    ("auto", "cpu", jnp.float32, "xla"),
    ("auto", "cpu", jnp.bfloat16, "xla"),
    ("auto", "tpu", jnp.bfloat16, "xla"),
    ("auto", "gpu", jnp.float32, "xla"),  # cuDNN's fused attention has no float32 mode; float32 is the parity mode
    ("auto", "gpu", jnp.bfloat16, "cudnn"),
    ("auto", "gpu", jnp.float16, "cudnn"),
    ("xla", "gpu", jnp.bfloat16, "xla"),
    ("cudnn", "gpu", jnp.bfloat16, "cudnn"),
])
def test_each_backend_gets_its_kernel(requested, platform, dtype, kernel):
    assert select_kernel(requested, platform, dtype) == kernel


@pytest.mark.parametrize("requested, platform, dtype, message", [
    ("cudnn", "cpu", jnp.bfloat16, "needs an NVIDIA GPU"),
    ("cudnn", "gpu", jnp.float32, "bfloat16/float16 compute"),
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


def test_an_automatic_fused_choice_that_cannot_compile_falls_back_and_says_so(tiny_bert_dir):
    """cuDNN cannot compile on this CPU: a runtime that chose it automatically warns, names the kernel it took, and
    gives the explicit kernel's numbers; one that was asked for it explicitly raises."""
    encoder = Encoder.from_pretrained(tiny_bert_dir)
    assert encoder.compile_stats.attention == "xla"
    expected = encoder.encode(MIXED)
    batches = encoder.prepare(MIXED, prompt=encoder.sentence.resolve_prompt(None, None)).batches
    runtime = Runtime(encoder.graphdef, encoder.params, attention="cudnn", fallback=True)
    with pytest.warns(RuntimeWarning, match="the cudnn attention kernel did not compile here"):
        out = dict((tuple(b.texts), v) for b, v in runtime.run(batches, pooling="mean", normalize=True))
    assert runtime.stats.attention == "xla (cudnn unavailable)"
    got = np.zeros_like(expected)
    for texts, vectors in out.items():
        got[list(texts)] = vectors
    assert np.abs(got - expected).max() == 0.0
    strict = Runtime(encoder.graphdef, encoder.params, attention="cudnn", fallback=False)
    with pytest.raises(Exception):
        next(strict.run(batches[:1], pooling="mean", normalize=True))
