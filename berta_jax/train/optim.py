"""The optimizer: AdamW as the Hugging Face Trainer (and so sentence-transformers' trainer) sets it.

Defaults, stated once here and in the README: learning rate 5e-5, betas (0.9, 0.999), eps 1e-8,
weight decay 0.0 (optax's `adamw` would decay by 1e-4) and never on biases or LayerNorm parameters,
gradients clipped to a global norm of 1.0 before the update, a linear warmup from 0 then the
schedule (`linear` to 0 at the last step, `cosine` to 0, or `constant`). The step-t update uses the
rate at t, as the Trainer's scheduler does (so with a warmup the first update moves nothing).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

# Parameter names (the last part of a path) that are never decayed; LayerNorm modules' names.
NO_DECAY_LEAVES = ("bias",)
LAYER_NORMS = ("norm", "ln_attn", "ln_ffn")


def learning_rate(lr: float, schedule: str, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """The rate at optimizer step t, as transformers'
    `get_{constant,linear,cosine}_schedule_with_warmup` give it."""

    def rate(step):
        step = jnp.asarray(step, jnp.float32)
        warm = step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "constant":
            after = jnp.float32(1.0)
        elif schedule == "linear":
            after = jnp.maximum(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
        else:  # cosine, half a period
            after = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(math.pi * progress)))
        return lr * jnp.where(step < warmup_steps, warm, after)

    return rate


def decay_mask(params) -> object:
    """True where weight decay applies: matrices and embeddings, not biases or LayerNorms."""

    def decays(path, _leaf) -> bool:
        names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        return names[-1] not in NO_DECAY_LEAVES and not any(n in LAYER_NORMS for n in names)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(settings, rate: optax.Schedule) -> optax.GradientTransformation:
    """Clip by global norm (when max_grad_norm > 0), then AdamW on the schedule `rate`."""
    adamw = optax.adamw(
        rate,
        b1=settings["optim.b1"],
        b2=settings["optim.b2"],
        eps=settings["optim.eps"],
        weight_decay=settings["optim.weight_decay"],
        mask=decay_mask,
    )
    clip = settings["optim.max_grad_norm"]
    return optax.chain(optax.clip_by_global_norm(clip), adamw) if clip > 0 else adamw
