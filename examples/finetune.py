"""Fine-tune a BERT sentence encoder in JAX with optax, then hand it back to PyTorch users.

  python examples/finetune.py                               # the packaged all-MiniLM-L6-v2 (docs/training.md)
  python examples/finetune.py --model /path/to/BERTA --out ./berta-tuned --steps 200

Without --out the checkpoint goes to a new temporary folder (printed at the end), never into the
working directory.

Builds a few hundred Russian/English query/document pairs from templates, trains with an in-batch
contrastive loss (dropout on, the model's own search_query / search_document prompts when it has them),
prints the loss as it goes down, saves a Hugging Face checkpoint (model.safetensors + tokenizer +
sentence-transformers files, written atomically), and checks that sentence-transformers loads it and
gives the same embeddings as berta-jax.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from berta_jax import Encoder, flat_params, make_embed_fn  # noqa: E402
from berta_jax.convert.folders import write_hf_folder  # noqa: E402

_ITEMS = [("хлеб", "bread"), ("молоко", "milk"), ("билет на поезд", "a train ticket"), ("ноутбук", "a laptop"),
          ("велосипед", "a bicycle"), ("кофе", "coffee"), ("книга", "a book"), ("такси", "a taxi ride")]
_CITIES = [("Москва", "Moscow"), ("Казань", "Kazan"), ("Ярославль", "Yaroslavl"), ("Новосибирск", "Novosibirsk"),
           ("Самара", "Samara"), ("Пермь", "Perm")]


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` (query, document) pairs in Russian and English from templates; within each pass over the
    template x item x city combinations no two pairs share a combination, so in-batch negatives are real."""
    rng = random.Random(seed)
    templates = [
        lambda i, c, p: (f"Сколько стоит {i[0]} в городе {c[0]}?", f"В городе {c[0]} {i[0]} стоит {p} рублей."),
        lambda i, c, p: (f"How much is {i[1]} in {c[1]}?", f"In {c[1]}, {i[1]} costs {p} roubles."),
        lambda i, c, p: (f"Где купить {i[0]}, {c[0]}", f"Купить {i[0]} в городе {c[0]} можно в центре."),
    ]
    combos = [(t, i, c) for t in templates for i in _ITEMS for c in _CITIES]
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        rng.shuffle(combos)
        pairs += [t(i, c, rng.randint(2, 900) * 10) for t, i, c in combos]
    return pairs[:n]


def _pad(encoder: Encoder, texts: list[str], prompt: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = encoder.tokenizer(texts, prompt=prompt)
    ids = np.full((len(texts), length), encoder.config.pad_token_id, np.int32)
    mask = np.zeros((len(texts), length), np.int32)
    for r, row in enumerate(tokens.input_ids):
        row = row[:length]
        ids[r, : len(row)], mask[r, : len(row)] = row, 1
    return ids, mask


def contrastive_loss(q: jax.Array, d: jax.Array, scale: float = 20.0) -> jax.Array:
    """In-batch softmax cross-entropy: query i should be closest to document i (MultipleNegativesRankingLoss)."""
    logits = scale * q @ d.T
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.diag(logits))


def finetune(model: str, out: str, *, steps: int = 40, batch_size: int = 16, lr: float = 5e-5,
             length: int = 48, seed: int = 0, log=print) -> dict:
    encoder = Encoder.from_pretrained(model)
    prompts = {}
    for role in ("query", "document"):
        name = encoder.sentence.retrieval_prompt_name(role)
        prompts[role] = encoder.sentence.prompts[name] if name else ""
    embed = make_embed_fn(encoder.graphdef, pooling=encoder.sentence.pooling, normalize=True)

    def loss_fn(params, q_ids, q_mask, d_ids, d_mask, key):
        k_q, k_d = jax.random.split(key)
        return contrastive_loss(embed(params, q_ids, q_mask, dropout_key=k_q), embed(params, d_ids, d_mask, dropout_key=k_d))

    optimizer = optax.adamw(lr, weight_decay=0.01)

    @jax.jit
    def train_step(params, opt_state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    pairs = make_pairs(batch_size * steps, seed)
    params, opt_state, key = encoder.params, optimizer.init(encoder.params), jax.random.key(seed)
    losses = []
    for step in range(steps):
        chunk = pairs[step * batch_size : (step + 1) * batch_size]
        batch = (*_pad(encoder, [q for q, _ in chunk], prompts["query"], length),
                 *_pad(encoder, [d for _, d in chunk], prompts["document"], length))
        key, step_key = jax.random.split(key)
        params, opt_state, loss = train_step(params, opt_state, batch, step_key)
        loss = float(loss)
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {step}; lower the learning rate (now {lr})")
        losses.append(loss)
        if step % 10 == 0 or step == steps - 1:
            log(f"step {step:4d}  loss {loss:.4f}")

    saved = write_hf_folder(flat_params(params), encoder.config, out, side_files_from=encoder.folder)
    log(f"saved {saved}")
    return {"losses": losses, "saved": saved.parent, "prompts": prompts}


def check_with_sentence_transformers(folder: Path, texts: list[str]) -> float:
    """Max abs difference between sentence-transformers (PyTorch) and berta-jax on the saved checkpoint."""
    from sentence_transformers import SentenceTransformer

    ours = Encoder.from_pretrained(folder).encode(texts, prompt="", normalize=True)
    theirs = SentenceTransformer(str(folder), device="cpu").encode(texts, prompt="", normalize_embeddings=True)
    return float(np.abs(ours - theirs).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder or hub id (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--out", help="folder for the fine-tuned checkpoint (default: a new temporary folder)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5)
    args = parser.parse_args()
    if args.model is None:
        from berta_jax.cli.commands import packaged_minilm

        args.model = packaged_minilm()
    if args.out is None:
        args.out = str(Path(tempfile.mkdtemp(prefix="berta-jax-finetuned-")) / "model")
    result = finetune(args.model, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    first, last = np.mean(result["losses"][:5]), np.mean(result["losses"][-5:])
    print(f"loss: first 5 steps {first:.4f} -> last 5 steps {last:.4f}")
    diff = check_with_sentence_transformers(result["saved"], [q for q, _ in make_pairs(8, seed=99)])
    print(f"sentence-transformers vs berta-jax on the saved checkpoint: max abs diff {diff:.2e}")
    print(f"wrote the fine-tuned checkpoint to {result['saved']}")


if __name__ == "__main__":
    main()
