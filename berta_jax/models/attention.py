"""Scaled dot-product attention and the masks that say which keys each query may see.

Three kernels compute the same softmax(q k^T / sqrt(K) + mask) v:
- "xla": explicit batched matmuls with float32 logits and softmax, on every backend. It is the reference, and
  the only kernel that returns attention probabilities or applies dropout to them (training, introspection).
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, cuDNN's fused (flash) attention on NVIDIA
  GPUs for bfloat16/float16 compute; the mask goes in as a [B, 1, L, L] bias.
- "splash": Pallas splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`), the TPU's blocked
  flash kernel, for bfloat16/float16 compute; the mask goes in as segment ids, which it supports natively.
Each is an `AttentionKernel` object that builds the mask in the form it takes (`mask`) and runs (`__call__`); the
model is handed one and never switches on a name. `select_kernel` picks "cudnn" for 16-bit compute on a GPU, "splash" for 16-bit compute on a TPU, and "xla"
everywhere else: CPUs (XLA fuses the explicit form well) and float32 on accelerators (neither fused kernel has
a float32 mode that keeps PyTorch parity: cuDNN has none, splash multiplies at the TPU's default bf16-pass
precision, and float32 is the parity mode).

The mask forms. For "xla" and "cudnn" it is an additive
float32 bias: 0 where a query may attend to a key, a large finite negative value elsewhere (finite, so a
filler row whose keys are all padding gets a uniform softmax, never NaN); `[B, 1, 1, L]` (padding keys) for
"xla" without packing, `[B, 1, L, L]` (same text only) otherwise. For "splash" it is the int32 segment ids
`[B, L]` themselves (0 = padding, which then attends only to padding: never read, never NaN).
"""

from __future__ import annotations

import abc
import math
import warnings
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec
from jaxtyping import Array, Bool, Float, Int

MASKED_LOGIT = -1e30
SPLASH_TILE = 128  # splash's query/key block sizes are multiples of this; rows are padded up to one
Mask = Float[Array, "B 1 L L"] | Float[Array, "B 1 1 L"] | Int[Array, "B L"]
Dropout = Callable[[Float[Array, "B H L L"]], Float[Array, "B H L L"]]


class AttentionKernel(abc.ABC):
    """softmax(q k^T / sqrt(K) + mask) v by one implementation: `mask` builds the mask in the form it takes,
    `__call__` runs it. Stateless: one shared instance per kernel (`KERNELS`)."""

    name: ClassVar[str]
    platform: ClassVar[tuple[str, str] | None] = (
        None  # (backend, in words) where a fused kernel runs
    )
    needs_mesh: ClassVar[bool] = (
        False  # compiled under `jax.set_mesh` (a kernel XLA cannot partition itself)
    )

    @abc.abstractmethod
    def mask(
        self, key_mask: Bool[Array, "B L"], segment_ids: Int[Array, "B L"] | None = None
    ) -> Mask:
        """Which keys each query may see, in this kernel's form (segment ids: 0 = padding)."""

    @abc.abstractmethod
    def __call__(
        self,
        q: Float[Array, "B L H K"],
        k: Float[Array, "B L H K"],
        v: Float[Array, "B L H K"],
        mask: Mask,
        *,
        precision: jax.lax.Precision,
        dropout: Dropout | None = None,
        with_probs: bool = False,
    ) -> tuple[Float[Array, "B L H K"], Float[Array, "B H L L"] | None]:
        """The context and, when asked, the probabilities before dropout."""

    def __repr__(self) -> str:
        return f"<{self.name} attention>"


class ExplicitKernel(AttentionKernel):
    """ "xla": batched matmuls with float32 logits and softmax, on every backend. The reference, and the only
    kernel that returns probabilities or applies dropout to them."""

    name: ClassVar[str] = "xla"

    def mask(
        self, key_mask: Bool[Array, "B L"], segment_ids: Int[Array, "B L"] | None = None
    ) -> Mask:
        return attention_bias(
            key_mask, segment_ids
        )  # [B, 1, 1, L] when unpacked: broadcast over queries

    def __call__(
        self,
        q,
        k,
        v,
        mask: Mask,
        *,
        precision: jax.lax.Precision,
        dropout: Dropout | None = None,
        with_probs: bool = False,
    ):
        return explicit_attention(
            q, k, v, mask, precision=precision, dropout=dropout, with_probs=with_probs
        )


class FusedKernel(AttentionKernel):
    """A fused (flash) kernel: no probabilities, no dropout (`BertModel.forward` runs the explicit kernel
    whenever either is in play)."""

    def mask(
        self, key_mask: Bool[Array, "B L"], segment_ids: Int[Array, "B L"] | None = None
    ) -> Mask:
        return attention_bias(key_mask, segment_ids, full=True)

    def __call__(
        self,
        q,
        k,
        v,
        mask: Mask,
        *,
        precision: jax.lax.Precision,
        dropout: Dropout | None = None,
        with_probs: bool = False,
    ):
        if dropout is not None or with_probs:
            raise ValueError(
                f"the {self.name} attention kernel returns no probabilities and applies no dropout; "
                "use 'xla'"
            )
        return self.fused(q, k, v, mask), None

    @abc.abstractmethod
    def fused(
        self,
        q: Float[Array, "B L H K"],
        k: Float[Array, "B L H K"],
        v: Float[Array, "B L H K"],
        mask: Mask,
    ) -> Float[Array, "B L H K"]:
        """The context of the fused call."""


class CudnnKernel(FusedKernel):
    """ "cudnn": cuDNN's fused attention through `jax.nn.dot_product_attention` (NVIDIA GPUs, 16-bit compute)."""

    name: ClassVar[str] = "cudnn"
    platform: ClassVar[tuple[str, str]] = ("gpu", "an NVIDIA GPU")

    def fused(self, q, k, v, mask: Mask) -> Float[Array, "B L H K"]:
        return fused_attention(q, k, v, mask, implementation="cudnn")


class SplashKernel(FusedKernel):
    """ "splash": Pallas splash attention, the TPU's blocked flash kernel (16-bit compute); off a TPU it runs in
    the Pallas interpreter, correct but slow (tests only: `select_kernel` refuses it there)."""

    name: ClassVar[str] = "splash"
    platform: ClassVar[tuple[str, str]] = ("tpu", "a TPU")
    needs_mesh: ClassVar[bool] = (
        True  # runs in a shard_map over the rows: XLA cannot partition a Pallas kernel
    )

    def mask(
        self, key_mask: Bool[Array, "B L"], segment_ids: Int[Array, "B L"] | None = None
    ) -> Mask:
        return (key_mask if segment_ids is None else segment_ids).astype(jnp.int32)

    def fused(self, q, k, v, mask: Mask) -> Float[Array, "B L H K"]:
        interpret = jax.default_backend() != "tpu"
        if interpret:
            warnings.warn(
                "splash attention off TPU runs in the Pallas interpreter: correct but slow, meant for "
                "tests; use attention_kernel='xla'",
                RuntimeWarning,
                stacklevel=4,
            )
        return splash_attention(q, k, v, mask, interpret=interpret)


EXPLICIT = ExplicitKernel()
KERNELS: dict[str, AttentionKernel] = {
    kernel.name: kernel for kernel in (EXPLICIT, CudnnKernel(), SplashKernel())
}


def kernel_named(kernel: str | AttentionKernel) -> AttentionKernel:
    """The kernel object for a name ("xla", "cudnn", "splash"), or the object itself."""
    if isinstance(kernel, AttentionKernel):
        return kernel
    if kernel not in KERNELS:
        raise ValueError(
            f"attention kernel {kernel!r} is not one of {', '.join(map(repr, KERNELS))}"
        )
    return KERNELS[kernel]


def select_kernel(requested: str, platform: str, dtype) -> AttentionKernel:
    """The kernel for `requested` ("auto", "xla", "cudnn" or "splash") on `platform` ("cpu", "gpu", "tpu") with
    compute `dtype`; a kernel the backend cannot run is a ValueError saying what to use instead."""
    if requested not in ("auto", *KERNELS):
        raise ValueError(
            f"attention={requested!r} is not a kernel; choose 'auto', {', '.join(map(repr, KERNELS))}"
        )
    sixteen_bit = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if requested == "auto":
        fused = [k for k in KERNELS.values() if k.platform and k.platform[0] == platform]
        return fused[0] if fused and sixteen_bit else EXPLICIT
    kernel = KERNELS[requested]
    if kernel.platform and not (platform == kernel.platform[0] and sixteen_bit):
        raise ValueError(
            f"attention={requested!r} needs {kernel.platform[1]} and bfloat16/float16 compute (here: "
            f"{platform}, {jnp.dtype(dtype).name}); use attention='auto' or 'xla'"
        )
    return kernel


def attention_bias(
    key_mask: Bool[Array, "B L"],
    segment_ids: Int[Array, "B L"] | None = None,
    *,
    full: bool = False,
) -> Float[Array, "B 1 L L"] | Float[Array, "B 1 1 L"]:
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
        segment_ids = key_mask.astype(
            jnp.int32
        )  # one text per row: any padding pattern, queries included
    if segment_ids is None:
        return jnp.where(key_mask, 0.0, MASKED_LOGIT).astype(jnp.float32)[:, None, None, :]
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
    return jnp.where(same, 0.0, MASKED_LOGIT).astype(jnp.float32)[:, None, :, :]


def fused_attention(
    q: Float[Array, "B L H K"],
    k: Float[Array, "B L H K"],
    v: Float[Array, "B L H K"],
    bias: Float[Array, "B 1 L L"],
    *,
    implementation: str,
) -> Float[Array, "B L H K"]:
    """`jax.nn.dot_product_attention` in berta-jax's layout: the same [B, L, H, K] tensors, scale 1/sqrt(K), and
    the mask as a full [B, 1, L, L] bias (cuDNN takes no bias broadcast over queries; see `attention_bias`)."""
    return jax.nn.dot_product_attention(
        q, k, v, bias=bias.astype(q.dtype), implementation=implementation
    )


def splash_attention(
    q: Float[Array, "B L H K"],
    k: Float[Array, "B L H K"],
    v: Float[Array, "B L H K"],
    segment_ids: Int[Array, "B L"],
    *,
    interpret: bool = False,
) -> Float[Array, "B L H K"]:
    """Splash attention over the texts of each row, in berta-jax's layout and scale.

    Rows are padded to a multiple of `SPLASH_TILE` with segment 0 and cut back; the kernel runs per row (vmap).
    Under a mesh (`jax.set_mesh`, as `Runtime` sets for this kernel) it runs inside `jax.shard_map` over the
    rows, since XLA cannot partition a Pallas TPU kernel itself. `interpret=True` runs the Pallas interpreter
    (any backend; for tests), which `attention` uses off TPU.
    """
    from jax.experimental.pallas.ops.tpu import (
        splash_attention as splash,
    )  # on use: Pallas adds ~0.2 s to a start

    batch, length, heads, dim = q.shape
    padded = -(-length // SPLASH_TILE) * SPLASH_TILE
    block = next(b for b in (512, 256, SPLASH_TILE) if padded % b == 0)
    scaled = q * jnp.asarray(1.0 / math.sqrt(dim), q.dtype)
    q, k, v = (
        jnp.pad(x, ((0, 0), (0, padded - length), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
        for x in (scaled, k, v)
    )
    segments = jnp.pad(segment_ids, ((0, 0), (0, padded - length)))  # the padding is segment 0
    kernel = splash.make_splash_mha(
        splash.MultiHeadMask([splash.FullMask((padded, padded))] * heads),
        head_shards=1,
        q_seq_shards=1,
        block_sizes=splash.BlockSizes(
            block_q=block,
            block_kv=block,
            block_kv_compute=block,
            block_q_dkv=block,
            block_kv_dkv=block,
            block_kv_dkv_compute=block,
            block_q_dq=block,
            block_kv_dq=block,
        ),
        interpret=interpret,
    )
    run = jax.vmap(
        lambda q, k, v, s: kernel(q, k, v, segment_ids=splash.SegmentIds(q=s, kv=s))
    )  # [H, L, K] rows
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        rows = PartitionSpec(
            mesh.axis_names
        )  # Pallas outputs carry no varying-axes type: rows are independent
        run = jax.shard_map(run, mesh=mesh, in_specs=(rows,) * 4, out_specs=rows, check_vma=False)
    return run(q, k, v, segments)[:, :, :length].transpose(0, 2, 1, 3)


def explicit_attention(
    q: Float[Array, "B L H K"],
    k: Float[Array, "B L H K"],
    v: Float[Array, "B L H K"],
    bias: Float[Array, "B 1 L L"] | Float[Array, "B 1 1 L"],
    *,
    precision: jax.lax.Precision,
    dropout: Dropout | None = None,
    with_probs: bool = False,
) -> tuple[Float[Array, "B L H K"], Float[Array, "B H L L"] | None]:
    """The "xla" kernel: logits and softmax in float32; probabilities returned when asked.

    Queries are pre-scaled (exact for power-of-two head sizes), and heads move next to the batch
    ([B, H, L, K]) so both products are batched GEMMs.
    """
    dtype = q.dtype
    q = q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), dtype)
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))  # [B, H, L, K]
    logits = (
        jnp.matmul(
            q, k.transpose(0, 1, 3, 2), precision=precision, preferred_element_type=jnp.float32
        )
        + bias
    )
    probs = jax.nn.softmax(logits, axis=-1)  # [B, H, Lq, Lk], float32
    weights = probs if dropout is None else dropout(probs)
    # float32 out (accumulated in float32): exact for float32 compute, the matrix units' own mode for bfloat16
    context = jnp.matmul(
        weights.astype(dtype), v, precision=precision, preferred_element_type=jnp.float32
    )
    return context.transpose(0, 2, 1, 3), probs if with_probs else None
