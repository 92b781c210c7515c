"""Training equals PyTorch: N steps of `train()` against the same N steps of sentence-transformers.

The reference is what sentence-transformers' trainer does, written out: a `SentenceTransformer`
loaded from the same folder with dropout 0, each column preprocessed with its prompt as the
trainer's collator does (`model.preprocess(texts, prompt=...)`), sentence-transformers' own
`MultipleNegativesRankingLoss`, `clip_grad_norm_`, torch AdamW over the Hugging Face Trainer's two
parameter groups (`Trainer.get_decay_parameter_names`: no decay on biases and LayerNorm weights),
`get_linear_schedule_with_warmup` stepped once per optimizer step, and with accumulation each
micro-batch's loss divided by the count before `backward` (the Trainer's averaging). The batches
are the plan's with shuffle off: rows in file order, `batch_size` at a time (the texts of a batch
are distinct, so the no-duplicates rule skips none). The cached case trains `cached_mnrl` with a
mini-batch smaller than the batch against the same plain MNRL reference (their loss and gradients
are equal).

Settings that make every part count: a warmup of 2 (the first update moves only the moments); lr
1e-3 and weight decay 0.4, so decay shifts a tensor by wd * sum(lr_t) = 1e-3 of its norm over 5
steps and a wrong no-decay mask would miss the parameter bar 10-fold; `max_grad_norm` 12 on
MiniLM, 1 on the random BERTA-shaped model, which the test asserts lies between the run's smallest
and largest gradient norm (some steps clipped, some not: Adam is nearly scale-free, but clipping
only some steps reweights the moments). The cached case, which is about the loss and the
accumulation, runs at lr 5e-5: at 1e-3 its loss climbs to 4.7 and float32 rounding alone puts one
step 1.1e-5 from torch's (9.9e-6 at 2e-4).

Bars (float32, highest matmul precision):
- loss: every step within 1e-5 absolute of torch's, as `train()` returns it and as
  `metrics.jsonl` records it (measured: MiniLM 6.0e-6, its cached case 1.2e-6, BERTA-shaped 2.6e-6).
- parameters: per tensor ||p_jax - p_torch||_F / ||p_torch||_F <= 1e-4, on the exported `model/`
  folder loaded by sentence-transformers (which also proves the export). Measured worst: MiniLM
  5.5e-6 (the word embeddings), its cached case 9.6e-8, BERTA-shaped 2.2e-6 (position embeddings).
- the attention key biases are held to a different norm, because their true gradient is zero:
  a key bias adds q . b_k to every score of a query alike, and softmax ignores a shared shift. Both
  sides' gradients there are rounding noise, which Adam scales to steps of size ~lr: measured
  ||p_jax - p_torch|| / ||p_torch - p_0|| = 1.1-1.8 (independent noise on each side) and 0.09-0.17
  of ||p_torch|| on MiniLM (BERTA-shaped's larger random biases: 4e-5-1.4e-4; both measured on
  easier pairs than these, at these settings). No bound on the
  tensor itself is meaningful; its justified norm is its effect on the function, which is nil:
  the exported model (with the JAX key biases) embeds held-out texts like the torch-trained model:
  every element of the unit-norm embeddings within 1e-4, the parameters' bar (measured on MiniLM
  1.8e-5, from the other tensors' 1e-6 differences through six layers).
- the pooler takes no part in the sentence embedding: it has no gradient and torch's AdamW skips it,
  so it must leave the run bit-identical to the input folder's.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from berta_jax.train.config import TrainConfig
from berta_jax.train.trainer import train

WEIGHT_DECAY, WARMUP = 0.4, 2
LOSS_TOL, PARAM_TOL, EMBED_TOL = 1e-5, 1e-4, 1e-4
PROMPTS = {"anchor": "search_query: ", "positive": "search_document: "}
_SUBJECTS = ["Кот", "Врач", "The cat", "A doctor", "Программист", "The river", "Москва", "Snow",
             "Ученик", "The train", "Сосед", "A bird", "Дождь", "The city", "Книга", "Music",
             "Солнце", "A child", "Море", "The wind"]
_ACTS = ["сидит на крыше", "лечит людей", "sleeps on the roof", "works at night", "пишет код",
         "flows to the sea", "столица России", "falls in winter", "читает книгу", "leaves at noon",
         "чинит забор", "sings at dawn", "идёт весь день", "never sleeps", "лежит на столе",
         "fills the hall", "светит ярко", "plays outside", "шумит у берега", "moves the trees"]
HELD_OUT = ["Где лечат людей?", "The capital of Russia is Moscow.", "Кот спит на диване."]


@dataclasses.dataclass(frozen=True)
class Case:
    steps: int = 5
    batch: int = 4
    accumulate: int = 1
    lr: float = 1e-3
    max_grad_norm: float = 12.0  # between the run's smallest and largest gradient norm
    loss: tuple = (("name", "mnrl"),)

    @property
    def micro_batches(self) -> int:
        return self.steps * self.accumulate


PLAIN = Case()
CACHED = Case(steps=4, accumulate=2, lr=5e-5,
              loss=(("name", "cached_mnrl"), ("mini_batch_size", 2)))


def pairs(n: int) -> list[dict[str, str]]:
    """n rows of (anchor, positive); every run of 4 aligned rows holds distinct texts."""
    rows = [{"anchor": f"{_SUBJECTS[i % 20]}{'?' if i < 20 else '!'}",
             "positive": f"{_ACTS[(i + i // 20 * 3) % 20]}."} for i in range(n)]
    assert n <= 40
    return rows


def run_jax(folder: Path, out: Path, rows: list[dict], case: Case):
    data = out.parent / f"{out.name}.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    settings = {
        "model": str(folder), "output_dir": str(out), "steps": case.steps, "seed": 0,
        "data": {"train": [str(data)], "batch_size": case.batch, "shuffle": False},
        "loss": dict(case.loss),
        "optim": {"lr": case.lr, "warmup_steps": WARMUP, "weight_decay": WEIGHT_DECAY,
                  "max_grad_norm": case.max_grad_norm, "schedule": "linear",
                  "accumulate": case.accumulate},
        "model_config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        "prompts": dict(PROMPTS),
        "log": {"tensorboard": False},
    }
    result = train(TrainConfig.from_dict(settings), progress=False, log=lambda *a: None)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return result, metrics


def sentence_transformer(folder: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(
        str(folder), device="cpu",
        config_kwargs={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        model_kwargs={"attn_implementation": "eager"},
    )


def adamw(model, lr: float):
    """torch AdamW over the Hugging Face Trainer's parameter groups."""
    from transformers import Trainer

    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = list(model.named_parameters())
    assert decay and len(decay) < len(named)
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": WEIGHT_DECAY},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def run_torch(folder: Path, rows: list[dict], case: Case):
    """The reference: (model after, losses, gradient norms before clipping, parameters before)."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import get_linear_schedule_with_warmup

    model = sentence_transformer(folder).train()
    before = {n: p.detach().clone().numpy() for n, p in model.named_parameters()}
    loss_fn = MultipleNegativesRankingLoss(model)
    optimizer = adamw(model, case.lr)
    schedule = get_linear_schedule_with_warmup(optimizer, WARMUP, case.steps)
    losses, norms = [], []
    for step in range(case.steps):
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(case.accumulate):
            start = (step * case.accumulate + micro) * case.batch
            batch = rows[start : start + case.batch]
            features = [model.preprocess([r[c] for r in batch], prompt=PROMPTS[c]) for c in PROMPTS]
            loss = loss_fn(features, None) / case.accumulate
            loss.backward()
            total += loss.item()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), case.max_grad_norm)))
        optimizer.step()
        schedule.step()
        losses.append(total)
    return model, losses, norms, before


def param_errors(trained: dict, after: dict) -> dict[str, float]:
    """Per tensor ||p_jax - p_torch||_F / ||p_torch||_F."""
    return {name: float(np.linalg.norm(trained[name].astype(np.float64) - ref)
                        / np.linalg.norm(ref)) for name, ref in after.items()}


def embeddings(model) -> np.ndarray:
    model.eval()
    return model.encode(HELD_OUT, prompt=PROMPTS["anchor"], convert_to_numpy=True)


def check_parity(folder: Path, tmp_path: Path, case: Case) -> None:
    rows = pairs(case.micro_batches * case.batch)
    reference, losses, norms, before = run_torch(folder, rows, case)
    result, metrics = run_jax(folder, tmp_path / "run", rows, case)

    assert min(norms) < case.max_grad_norm < max(norms), f"clipping must act on some steps: {norms}"
    assert len(result.losses) == case.steps
    assert [m["step"] for m in metrics] == list(range(1, case.steps + 1))
    for step, (ours, logged, ref) in enumerate(zip(result.losses, metrics, losses), 1):
        assert abs(ours - ref) <= LOSS_TOL, f"step {step}: loss {ours} vs torch {ref}"
        assert abs(logged["loss"] - ref) <= LOSS_TOL, f"step {step}: metrics.jsonl {logged}"

    exported = sentence_transformer(Path(result.model_dir))
    trained = {n: p.detach().numpy() for n, p in exported.named_parameters()}
    after = {n: p.detach().numpy() for n, p in reference.named_parameters()}
    assert set(trained) == set(after), set(trained) ^ set(after)
    pooler = [n for n in after if ".pooler." in n]
    for name in pooler:
        assert np.array_equal(trained[name], before[name]), f"{name} changed in the export"
        assert np.array_equal(after[name], before[name]), f"{name} changed in torch"
    key_biases = [n for n in after if n.endswith("attention.self.key.bias")]
    assert key_biases
    errors = param_errors(trained, {n: after[n] for n in after if n not in pooler + key_biases})
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    assert worst[0][1] <= PARAM_TOL, f"per-tensor relative errors above {PARAM_TOL}: {worst}"
    gap = np.abs(embeddings(exported) - embeddings(reference)).max()
    assert gap <= EMBED_TOL, f"held-out embeddings differ by {gap}"
    loss_gap = max(abs(a - b) for a, b in zip(result.losses, losses))
    print(f"loss gap {loss_gap:.1e}; worst tensors {worst}; embedding gap {gap:.1e}; "
          f"grad norms {norms}")


def test_train_steps_equal_sentence_transformers_minilm(minilm_dir, tmp_path):
    check_parity(minilm_dir, tmp_path, PLAIN)


def test_train_steps_equal_sentence_transformers_berta_shaped(berta_shaped_dir, tmp_path):
    check_parity(berta_shaped_dir, tmp_path, dataclasses.replace(PLAIN, max_grad_norm=1.0))


@pytest.mark.slow
def test_cached_loss_with_accumulation_equals_sentence_transformers(minilm_dir, tmp_path):
    check_parity(minilm_dir, tmp_path, CACHED)
