"""Scaled dot-product attention and the masks that say which keys each query may see.

Three kernels compute the same softmax(q k^T / sqrt(K) + mask) v:
- "xla": explicit batched matmuls with float32 logits and softmax, on every backend. It is the
  reference, and the only kernel that returns attention probabilities or applies dropout to them
  (training, introspection).
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, cuDNN's fused (flash) attention
  on NVIDIA GPUs for bfloat16/float16 compute; the mask goes in as a [B, 1, L, L] bias.
- "splash": Pallas splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`), the TPU's
  blocked flash kernel, for bfloat16/float16 compute; the mask goes in as segment ids, which it
  supports natively.
Each is an `AttentionKernel` object that builds the mask in the form it takes (`mask`) and runs
(`__call__`); the model is handed one and never switches on a name. The fused kernels' calls
themselves are in `fused_attention`. `select_kernel` picks "cudnn" for 16-bit compute on a GPU,
"splash" for 16-bit compute on a TPU, and "xla" everywhere else: CPUs (XLA fuses the explicit form
well) and float32 on accelerators (neither fused kernel has a float32 mode that keeps PyTorch
parity: cuDNN has none, splash multiplies at the TPU's default bf16-pass precision, and float32 is
the parity mode).

The mask forms. For "xla" and "cudnn" it is an additive float32 bias: 0 where a query may attend to
a key, a large finite negative value elsewhere (finite, so a filler row whose keys are all padding
gets a uniform softmax, never NaN); `[B, 1, 1, L]` (padding keys) for "xla" without packing,
`[B, 1, L, L]` (same text only) otherwise. For "splash" it is the int32 segment ids `[B, L]`
themselves (0 = padding, which then attends only to padding: never read, never NaN).
"""

from __future__ import annotations

import abc
import math
import warnings
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from berta_jax.models.fused_attention import fused_attention, splash_attention
from berta_jax.models.fused_attention import SPLASH_TILE  # noqa: F401 - re-exported

MASKED_LOGIT = -1e30
Mask = Float[Array, "B 1 L L"] | Float[Array, "B 1 1 L"] | Int[Array, "B L"]
Dropout = Callable[[Float[Array, "B H L L"]], Float[Array, "B H L L"]]


class AttentionKernel(abc.ABC):
    """softmax(q k^T / sqrt(K) + mask) v by one implementation: `mask` builds the mask in the form
    it takes, `__call__` runs it. Stateless: one shared instance per kernel (`KERNELS`)."""

    name: ClassVar[str]
    # (backend, in words) where a fused kernel runs
    platform: ClassVar[tuple[str, str] | None] = None
    # compiled under `jax.set_mesh` (a kernel XLA cannot partition itself)
    needs_mesh: ClassVar[bool] = False

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
    """ "xla": batched matmuls with float32 logits and softmax, on every backend. The reference, and
    the only kernel that returns probabilities or applies dropout to them."""

    name: ClassVar[str] = "xla"

    def mask(
        self, key_mask: Bool[Array, "B L"], segment_ids: Int[Array, "B L"] | None = None
    ) -> Mask:
        # [B, 1, 1, L] when unpacked: broadcast over queries
        return attention_bias(key_mask, segment_ids)

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
        return explicit_attention(
            q, k, v, mask, precision=precision, dropout=dropout, with_probs=with_probs
        )


class FusedKernel(AttentionKernel):
    """A fused (flash) kernel: no probabilities, no dropout (`BertModel.forward` runs the explicit
    kernel whenever either is in play)."""

    def mask(
        self, key_mask: Bool[Array, "B L"], segment_ids: Int[Array, "B L"] | None = None
    ) -> Mask:
        return attention_bias(key_mask, segment_ids, full=True)

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
    ) -> tuple[Float[Array, "B L H K"], None]:
        if dropout is not None or with_probs:
            raise ValueError(
                f"the {self.name} attention kernel returns no probabilities and applies no "
                "dropout; use 'xla'"
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
    """ "cudnn": cuDNN's fused attention through `jax.nn.dot_product_attention` (NVIDIA GPUs, 16-bit
    compute)."""

    name: ClassVar[str] = "cudnn"
    platform: ClassVar[tuple[str, str]] = ("gpu", "an NVIDIA GPU")

    def fused(
        self,
        q: Float[Array, "B L H K"],
        k: Float[Array, "B L H K"],
        v: Float[Array, "B L H K"],
        mask: Float[Array, "B 1 L L"],
    ) -> Float[Array, "B L H K"]:
        return fused_attention(q, k, v, mask, implementation="cudnn")


class SplashKernel(FusedKernel):
    """ "splash": Pallas splash attention, the TPU's blocked flash kernel (16-bit compute); off a
    TPU it runs in the Pallas interpreter, correct but slow (tests only: `select_kernel` refuses it
    there)."""

    name: ClassVar[str] = "splash"
    platform: ClassVar[tuple[str, str]] = ("tpu", "a TPU")
    # runs in a shard_map over the rows: XLA cannot partition a Pallas kernel
    needs_mesh: ClassVar[bool] = True

    def mask(
        self, key_mask: Bool[Array, "B L"], segment_ids: Int[Array, "B L"] | None = None
    ) -> Mask:
        return (key_mask if segment_ids is None else segment_ids).astype(jnp.int32)

    def fused(
        self,
        q: Float[Array, "B L H K"],
        k: Float[Array, "B L H K"],
        v: Float[Array, "B L H K"],
        mask: Int[Array, "B L"],
    ) -> Float[Array, "B L H K"]:
        interpret = jax.default_backend() != "tpu"
        if interpret:
            warnings.warn(
                "splash attention off TPU runs in the Pallas interpreter: correct but slow, meant "
                "for tests; use attention_kernel='xla'",
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
    """The kernel for `requested` ("auto", "xla", "cudnn" or "splash") on `platform` ("cpu", "gpu",
    "tpu") with compute `dtype`; a kernel the backend cannot run is a ValueError saying what to use
    instead."""
    if requested not in ("auto", *KERNELS):
        raise ValueError(
            f"attention={requested!r} is not a kernel; choose 'auto', "
            f"{', '.join(map(repr, KERNELS))}"
        )
    sixteen_bit = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if requested == "auto":
        fused = [k for k in KERNELS.values() if k.platform and k.platform[0] == platform]
        return fused[0] if fused and sixteen_bit else EXPLICIT
    kernel = KERNELS[requested]
    if kernel.platform and not (platform == kernel.platform[0] and sixteen_bit):
        raise ValueError(
            f"attention={requested!r} needs {kernel.platform[1]} and bfloat16/float16 compute "
            f"(here: {platform}, {jnp.dtype(dtype).name}); use attention='auto' or 'xla'"
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
        # one text per row: any padding pattern, queries included
        segment_ids = key_mask.astype(jnp.int32)
    if segment_ids is None:
        return jnp.where(key_mask, 0.0, MASKED_LOGIT).astype(jnp.float32)[:, None, None, :]
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
    return jnp.where(same, 0.0, MASKED_LOGIT).astype(jnp.float32)[:, None, :, :]


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
    # float32 out (accumulated in float32): exact for float32 compute, the matrix units' own
    # mode for bfloat16
    context = jnp.matmul(
        weights.astype(dtype), v, precision=precision, preferred_element_type=jnp.float32
    )
    return context.transpose(0, 2, 1, 3), probs if with_probs else None
