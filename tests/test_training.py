"""Training mode, introspection, and gradient parity with PyTorch autograd.

Gradient bar: with dropout off, the gradient of an in-batch contrastive loss over
query/document pairs (BERTA's search_query / search_document prompts) with respect to every parameter
matches PyTorch; per tensor, ||g_jax - g_torch||_F / max(||g_torch||_F, 1e-3 G) <= 1e-4 (float32), where
G is the norm of the whole torch gradient. The floor matters only for tensors whose true gradient is zero:
the attention key bias (softmax ignores a shift shared by all keys) gets rounding noise on both sides.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from berta_jax import Encoder, flat_params, make_embed_fn
from berta_jax.convert.checkpoint import flax_to_hf
from tests.helpers import cli_env, torch_bert, worker
from tests.texts import CARD_TEXTS, LONG, MIXED

GRAD_REL_TOL = 1e-4
QUERIES = ["Сколько программистов нужно?", "What is the capital of Russia?", "Где лечат людей?", "Кот на крыше"]
DOCUMENTS = ["Три программиста.", "Moscow is the capital of Russia.", "Людей лечат в больнице врачи.",
             "The cat sits on the roof of the house."]


def padded(encoder: Encoder, texts, prompt):
    tokens = encoder.tokenizer(texts, prompt=prompt)
    length = int(tokens.lengths.max())
    ids = np.zeros((len(texts), length), np.int32)
    mask = np.zeros_like(ids)
    for r, row in enumerate(tokens.input_ids):
        ids[r, : len(row)], mask[r, : len(row)] = row, 1
    return ids, mask


def contrastive_jax(q, d, scale=20.0):
    logits = scale * q @ d.T
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.diag(logits))


def _grad_errors(encoder: Encoder, folder) -> dict[str, float]:
    q_ids, q_mask = padded(encoder, QUERIES, "search_query: ")
    d_ids, d_mask = padded(encoder, DOCUMENTS, "search_document: ")
    fn = make_embed_fn(encoder.graphdef, pooling="mean", normalize=True)

    def loss(params):
        return contrastive_jax(fn(params, q_ids, q_mask), fn(params, d_ids, d_mask))

    jax_loss, grads = jax.jit(jax.value_and_grad(loss))(encoder.params)
    jax_grads = flax_to_hf(flat_params(grads))

    model = torch_bert(folder).train(False)
    for p in model.parameters():
        p.grad = None

    def embed(ids, mask):
        m = torch.from_numpy(mask).float()
        h = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()).last_hidden_state
        pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    q, d = embed(q_ids, q_mask), embed(d_ids, d_mask)
    torch_loss = torch.nn.functional.cross_entropy(20.0 * q @ d.T, torch.arange(len(QUERIES)))
    torch_loss.backward()
    assert abs(float(jax_loss) - torch_loss.item()) <= 1e-5
    # the pooler is not part of the sentence embedding: no gradient on either side
    ref = {n: p.grad.numpy() for n, p in model.named_parameters() if not n.startswith("pooler.")}
    floor = 1e-3 * np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in ref.values()))
    errors = {n: float(np.linalg.norm(jax_grads[n] - g) / max(np.linalg.norm(g), floor)) for n, g in ref.items()}
    assert set(errors) == set(jax_grads)
    return errors


@pytest.mark.parametrize("which", ["tiny_bert_dir", "minilm_dir"])
def test_contrastive_loss_gradients_match_pytorch_autograd(which, request):
    folder = request.getfixturevalue(which)
    errors = _grad_errors(Encoder.from_pretrained(folder), folder)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= GRAD_REL_TOL, f"{worst}: relative error {errors[worst]:.2e}"


def test_hidden_states_and_attentions_match_transformers(minilm_dir):
    encoder = Encoder.from_pretrained(minilm_dir)
    texts = [CARD_TEXTS[0], "short", MIXED[-1]]
    batch = encoder.tokenizer.hf(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
    ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
    out = encoder.model.forward(ids, mask, output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        ref = torch_bert(minilm_dir)(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
                                     output_hidden_states=True, output_attentions=True)
    real = mask.astype(bool)
    assert len(out.hidden_states) == len(ref.hidden_states) == 7 and len(out.attentions) == 6
    for ours, theirs in zip(out.hidden_states, ref.hidden_states):
        assert np.abs(np.asarray(ours)[real] - theirs.numpy()[real]).max() <= 1e-4
    for ours, theirs in zip(out.attentions, ref.attentions):
        ours, theirs = np.asarray(ours), theirs.numpy()
        assert ours.shape == theirs.shape == (3, 12, ids.shape[1], ids.shape[1])
        rows = real[:, None, :, None]  # real query rows; padding keys have ~0 probability in both
        assert np.abs(np.where(rows, ours - theirs, 0)).max() <= 1e-5


def test_dropout_only_in_training_mode(tiny_bert_dir):
    encoder = Encoder.from_pretrained(tiny_bert_dir)
    assert encoder.config.hidden_dropout_prob == 0.1  # transformers' default, read from config.json
    model = encoder.model
    ids, mask = np.array([[2, 40, 50, 3, 0]], np.int32), np.array([[1, 1, 1, 1, 0]], np.int32)
    inference = np.asarray(model(ids, mask))
    np.testing.assert_array_equal(np.asarray(model.forward(ids, mask, deterministic=True, dropout_key=jax.random.key(1)).last_hidden_state), inference)
    a = np.asarray(model.forward(ids, mask, deterministic=False, dropout_key=jax.random.key(1)).last_hidden_state)
    b = np.asarray(model.forward(ids, mask, deterministic=False, dropout_key=jax.random.key(1)).last_hidden_state)
    c = np.asarray(model.forward(ids, mask, deterministic=False, dropout_key=jax.random.key(2)).last_hidden_state)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - inference).max() > 1e-3 and np.abs(a - c).max() > 1e-3
    assert np.isfinite(a).all()
    with pytest.raises(ValueError, match="needs a dropout_key"):
        model.forward(ids, mask, deterministic=False)


def test_remat_gives_the_same_values_and_gradients(tiny_bert_dir):
    from flax import nnx

    from berta_jax import BertConfig, build_model
    from berta_jax.convert.checkpoint import read_params
    from berta_jax.storage.model_files import ModelFiles

    cfg = BertConfig.from_json(tiny_bert_dir / "config.json")
    params, source = read_params(ModelFiles(tiny_bert_dir))
    plain = build_model(cfg, params, source)
    remat = build_model(cfg, params, source, remat=True)
    ids, mask = np.array([[2, 40, 50, 3]], np.int32), np.ones((1, 4), np.int32)

    def loss(model):
        return jnp.sum(model.forward(ids, mask, deterministic=False, dropout_key=jax.random.key(0)).last_hidden_state ** 2)

    # Rematerialising recomputes the forward in the backward pass, so results differ by float32 rounding only.
    # Measured per tensor, as the PyTorch gradient bar is (relative Frobenius norm, floored at 1e-3 of the whole
    # gradient for tensors whose true gradient is zero), at 1e-5: ten times tighter than that bar. An
    # elementwise tolerance would flag entries where terms of +-30 cancel to 0.5.
    np.testing.assert_array_equal(np.asarray(plain.forward(ids, mask).last_hidden_state),
                                  np.asarray(remat.forward(ids, mask).last_hidden_state))
    g_plain = [np.asarray(v[...]) for _, v in nnx.to_flat_state(nnx.state(nnx.grad(loss)(plain)))]
    g_remat = [np.asarray(v[...]) for _, v in nnx.to_flat_state(nnx.state(nnx.grad(loss)(remat)))]
    floor = 1e-3 * np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in g_plain))
    errors = [np.linalg.norm(a - b) / max(np.linalg.norm(a), floor) for a, b in zip(g_plain, g_remat, strict=True)]
    assert max(errors) <= 1e-5, max(errors)


def test_truncated_long_texts_train_without_nan(tiny_bert_dir):
    encoder = Encoder.from_pretrained(tiny_bert_dir)
    ids, mask = padded(encoder, LONG + [""], "")
    fn = make_embed_fn(encoder.graphdef)
    grads = jax.grad(lambda p: jnp.sum(fn(p, ids, mask, dropout_key=jax.random.key(3))[0]))(encoder.params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree_util.tree_leaves(grads))


# --- the fine-tune example and what it saves -------------------------------------------------------


def _example():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "finetune.py"
    spec = importlib.util.spec_from_file_location("finetune_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a 16-step optax run on MiniLM; the gradients themselves are checked above
def test_finetune_example_lowers_the_loss_and_round_trips_to_sentence_transformers(minilm_dir, tmp_path):
    example = _example()
    result = example.finetune(str(minilm_dir), str(tmp_path / "tuned"), steps=16, batch_size=8, log=lambda _: None)
    losses = result["losses"]
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
    assert example.check_with_sentence_transformers(result["saved"], QUERIES + DOCUMENTS) <= 1e-5
    from safetensors.numpy import load_file

    saved = load_file(str(result["saved"] / "model.safetensors"))
    original = load_file(str(minilm_dir / "model.safetensors"))
    assert set(saved) == set(original)  # pooler and position ids carried through, nothing missing
    assert not np.array_equal(saved["encoder.layer.0.output.dense.weight"], original["encoder.layer.0.output.dense.weight"])


def test_nan_loss_stops_with_the_step(minilm_dir, tmp_path):
    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        _example().finetune(str(minilm_dir), str(tmp_path / "x"), steps=3, batch_size=4, lr=float("nan"),
                            log=lambda _: None)


def test_interrupted_save_leaves_the_previous_checkpoint(minilm_dir, tmp_path, monkeypatch):
    import os

    from berta_jax import BertConfig
    from berta_jax.convert.checkpoint import read_params
    from berta_jax.convert.folders import write_hf_folder
    from berta_jax.storage.model_files import ModelFiles

    cfg = BertConfig.from_json(minilm_dir / "config.json")
    params, _ = read_params(ModelFiles(minilm_dir))
    write_hf_folder(params, cfg, tmp_path / "ckpt", side_files_from=minilm_dir)
    good = (tmp_path / "ckpt" / "model.safetensors").read_bytes()

    def killed(*_):
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(os, "replace", killed)
    changed = {k: v + 1.0 for k, v in params.items()}
    with pytest.raises(KeyboardInterrupt):
        write_hf_folder(changed, cfg, tmp_path / "ckpt", side_files_from=minilm_dir)
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == good
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_parameters_sharded_on_the_hidden_axis_give_the_same_numbers(minilm_dir):
    result = worker("sharded_gradients", str(minilm_dir),
                    env=cli_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert result["devices"] == 4 and result["n_sharded"] > 10  # stacked layers: one leaf per kind of tensor
    assert result["emb"] <= 1e-6 and result["grad"] <= 1e-5
