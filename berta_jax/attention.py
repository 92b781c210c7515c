"""Scaled dot-product attention and the masks that say which keys each query may see.

Three kernels compute the same softmax(q k^T / sqrt(K) + mask) v:
- "xla": explicit batched matmuls with float32 logits and softmax, on every backend. It is the reference, and
  the only kernel that returns attention probabilities or applies dropout to them (training, introspection).
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, cuDNN's fused (flash) attention on NVIDIA
  GPUs for bfloat16/float16 compute; the mask goes in as a [B, 1, L, L] bias.
- "splash": Pallas splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`), the TPU's blocked
  flash kernel, for bfloat16/float16 compute; the mask goes in as segment ids, which it supports natively.
`select_kernel` picks "cudnn" for 16-bit compute on a GPU, "splash" for 16-bit compute on a TPU, and "xla"
everywhere else: CPUs (XLA fuses the explicit form well) and float32 on accelerators (neither fused kernel has
a float32 mode that keeps PyTorch parity: cuDNN has none, splash multiplies at the TPU's default bf16-pass
precision, and float32 is the parity mode).

`kernel_mask` builds the mask in the form the kernel takes. For "xla" and "cudnn" it is an additive
float32 bias: 0 where a query may attend to a key, a large finite negative value elsewhere (finite, so a
filler row whose keys are all padding gets a uniform softmax, never NaN); `[B, 1, 1, L]` (padding keys) for
"xla" without packing, `[B, 1, L, L]` (same text only) otherwise. For "splash" it is the int32 segment ids
`[B, L]` themselves (0 = padding, which then attends only to padding: never read, never NaN).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec
from jaxtyping import Array, Bool, Float, Int

MASKED_LOGIT = -1e30
KERNELS = ("xla", "cudnn", "splash")
FUSED_PLATFORM = {"cudnn": ("gpu", "an NVIDIA GPU"), "splash": ("tpu", "a TPU")}  # fused kernel -> where it runs
SPLASH_TILE = 128  # splash's query/key block sizes are multiples of this; rows are padded up to one


def select_kernel(requested: str, platform: str, dtype) -> str:
    """The kernel for `requested` ("auto", "xla", "cudnn" or "splash") on `platform` ("cpu", "gpu", "tpu") with
    compute `dtype`; a kernel the backend cannot run is a ValueError saying what to use instead."""
    if requested not in ("auto", *KERNELS):
        raise ValueError(f"attention={requested!r} is not a kernel; choose 'auto', {', '.join(map(repr, KERNELS))}")
    sixteen_bit = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if requested == "auto":
        fused = [name for name, (where, _) in FUSED_PLATFORM.items() if where == platform]
        return fused[0] if fused and sixteen_bit else "xla"
    if requested in FUSED_PLATFORM:
        where, hardware = FUSED_PLATFORM[requested]
        if not (platform == where and sixteen_bit):
            raise ValueError(f"attention={requested!r} needs {hardware} and bfloat16/float16 compute (here: "
                             f"{platform}, {jnp.dtype(dtype).name}); use attention='auto' or 'xla'")
    return requested


def kernel_mask(kernel: str, key_mask: Bool[Array, "B L"],
                segment_ids: Int[Array, "B L"] | None = None) -> Float[Array, "B 1 Q L"] | Int[Array, "B L"]:
    """The mask in the form `kernel` takes: an additive bias (`attention_bias`) or, for "splash", segment ids."""
    if kernel == "splash":
        return (key_mask if segment_ids is None else segment_ids).astype(jnp.int32)
    return attention_bias(key_mask, segment_ids, full=kernel != "xla")


def attention_bias(key_mask: Bool[Array, "B L"], segment_ids: Int[Array, "B L"] | None = None, *,
                   full: bool = False) -> Float[Array, "B 1 Q L"]:
    """The additive attention bias (`full`: always [B, 1, L, L], the form fused kernels take).

    Without segments, key t of row b is visible to every query of the row iff key_mask[b, t]:
        [B, L] -> [B, 1, 1, L]
    With segments (packed rows; 0 = padding), query i sees key j iff both belong to the same text:
        segment_ids  1 1 1 2 2 0          q\\k  1 1 1 2 2 0
                                           1   0 0 0 - - -
                                           2   - - - 0 0 -     ("-" = MASKED_LOGIT)
                                           0   - - - - - -
    """
    if segment_ids is None and full:
        segment_ids = key_mask.astype(jnp.int32)  # one text per row: any padding pattern, queries included
    if segment_ids is None:
        return jnp.where(key_mask, 0.0, MASKED_LOGIT).astype(jnp.float32)[:, None, None, :]
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
    return jnp.where(same, 0.0, MASKED_LOGIT).astype(jnp.float32)[:, None, :, :]


def attention(
    q: Float[Array, "B L H K"],
    k: Float[Array, "B L H K"],
    v: Float[Array, "B L H K"],
    mask: Float[Array, "B 1 Q L"] | Int[Array, "B L"],
    *,
    precision: jax.lax.Precision,
    dropout: Callable[[jax.Array], jax.Array] | None = None,
    with_probs: bool = False,
    kernel: str = "xla",
) -> tuple[Float[Array, "B L H K"], Float[Array, "B H L L"] | None]:
    """softmax(q k^T / sqrt(K) + mask) v, and the probabilities when asked (which, like dropout, needs "xla":
    `BertModel.forward` picks "xla" whenever either is in play); `mask` from `kernel_mask(kernel, ...)`."""
    if kernel == "xla":
        return explicit_attention(q, k, v, mask, precision=precision, dropout=dropout, with_probs=with_probs)
    if dropout is not None or with_probs:
        raise ValueError(f"the {kernel} attention kernel returns no probabilities and applies no dropout; use 'xla'")
    if kernel == "splash":
        interpret = jax.default_backend() != "tpu"
        if interpret:  # only a direct BertModel call gets here: select_kernel refuses splash off TPU
            warnings.warn("splash attention off TPU runs in the Pallas interpreter: correct but slow, meant for tests; "
                          "use attention_kernel='xla'", RuntimeWarning, stacklevel=2)
        return splash_attention(q, k, v, mask, interpret=interpret), None
    return fused_attention(q, k, v, mask, implementation=kernel), None


def fused_attention(q: Float[Array, "B L H K"], k: Float[Array, "B L H K"], v: Float[Array, "B L H K"],
                    bias: Float[Array, "B 1 L L"], *, implementation: str) -> Float[Array, "B L H K"]:
    """`jax.nn.dot_product_attention` in berta-jax's layout: the same [B, L, H, K] tensors, scale 1/sqrt(K), and
    the mask as a full [B, 1, L, L] bias (cuDNN takes no bias broadcast over queries; see `attention_bias`)."""
    return jax.nn.dot_product_attention(q, k, v, bias=bias.astype(q.dtype), implementation=implementation)


def splash_attention(q: Float[Array, "B L H K"], k: Float[Array, "B L H K"], v: Float[Array, "B L H K"],
                     segment_ids: Int[Array, "B L"], *, interpret: bool = False) -> Float[Array, "B L H K"]:
    """Splash attention over the texts of each row, in berta-jax's layout and scale.

    Rows are padded to a multiple of `SPLASH_TILE` with segment 0 and cut back; the kernel runs per row (vmap).
    Under a mesh (`jax.set_mesh`, as `Runtime` sets for this kernel) it runs inside `jax.shard_map` over the
    rows, since XLA cannot partition a Pallas TPU kernel itself. `interpret=True` runs the Pallas interpreter
    (any backend; for tests), which `attention` uses off TPU.
    """
    from jax.experimental.pallas.ops.tpu import splash_attention as splash  # on use: Pallas adds ~0.2 s to a start

    batch, length, heads, dim = q.shape
    padded = -(-length // SPLASH_TILE) * SPLASH_TILE
    block = next(b for b in (512, 256, SPLASH_TILE) if padded % b == 0)
    scaled = q * jnp.asarray(1.0 / math.sqrt(dim), q.dtype)
    q, k, v = (jnp.pad(x, ((0, 0), (0, padded - length), (0, 0), (0, 0))).transpose(0, 2, 1, 3) for x in (scaled, k, v))
    segments = jnp.pad(segment_ids, ((0, 0), (0, padded - length)))  # the padding is segment 0
    kernel = splash.make_splash_mha(
        splash.MultiHeadMask([splash.FullMask((padded, padded))] * heads), head_shards=1, q_seq_shards=1,
        block_sizes=splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                                      block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                                      block_kv_dq=block),
        interpret=interpret)
    run = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=splash.SegmentIds(q=s, kv=s)))  # [H, L, K] rows
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        rows = PartitionSpec(mesh.axis_names)  # Pallas outputs carry no varying-axes type: rows are independent
        run = jax.shard_map(run, mesh=mesh, in_specs=(rows,) * 4, out_specs=rows, check_vma=False)
    return run(q, k, v, segments)[:, :, :length].transpose(0, 2, 1, 3)


def explicit_attention(q, k, v, bias, *, precision: jax.lax.Precision, dropout=None, with_probs: bool = False):
    """The "xla" kernel: logits and softmax in float32; probabilities returned when asked.

    Queries are pre-scaled (exact for power-of-two head sizes), and heads move next to the batch
    ([B, H, L, K]) so both products are batched GEMMs.
    """
    dtype = q.dtype
    q = q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), dtype)
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))  # [B, H, L, K]
    logits = jnp.matmul(q, k.transpose(0, 1, 3, 2), precision=precision, preferred_element_type=jnp.float32) + bias
    probs = jax.nn.softmax(logits, axis=-1)  # [B, H, Lq, Lk], float32
    weights = probs if dropout is None else dropout(probs)
    # float32 out (accumulated in float32): exact for float32 compute, the matrix units' own mode for bfloat16
    context = jnp.matmul(weights.astype(dtype), v, precision=precision, preferred_element_type=jnp.float32)
    return context.transpose(0, 2, 1, 3), probs if with_probs else None
