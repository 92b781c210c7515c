"""Config validation, model shapes without memory, and the pure encode under JAX transforms."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from berta_jax import BertConfig, BertModel, ConfigError, Encoder, make_embed_fn, make_hidden_fn, param_shapes


def _hf_config(**overrides) -> dict:
    base = dict(model_type="bert", vocab_size=100, hidden_size=12, num_hidden_layers=1, num_attention_heads=3,
                intermediate_size=20, max_position_embeddings=16, hidden_act="gelu", layer_norm_eps=1e-12,
                type_vocab_size=2, pad_token_id=0, position_embedding_type="absolute")
    base.update(overrides)
    return base


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(model_type="roberta"), "model_type='roberta'"),
        (dict(position_embedding_type="relative_key"), "position_embedding_type='relative_key'"),
        (dict(hidden_act="swish"), "hidden_act='swish'"),
        (dict(hidden_size=13), "hidden_size=13 is not divisible by num_attention_heads=3"),
        (dict(num_hidden_layers=0), "num_hidden_layers=0"),
        (dict(layer_norm_eps=-1.0), "layer_norm_eps=-1.0"),
        (dict(pad_token_id=100), "pad_token_id=100"),
        (dict(is_decoder=True), "decoder"),
        (dict(auto_map={"AutoModel": "x.Y"}), "auto_map"),
    ],
)
def test_config_refuses_what_the_model_does_not_implement(overrides, field):
    with pytest.raises(ConfigError) as info:
        BertConfig.from_dict(_hf_config(**overrides), source="some/config.json")
    assert field in str(info.value) and "some/config.json" in str(info.value)


def test_config_missing_field_and_bad_json(tmp_path):
    raw = _hf_config()
    del raw["intermediate_size"]
    with pytest.raises(ConfigError, match="missing required field.*intermediate_size"):
        BertConfig.from_dict(raw)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        BertConfig.from_json(tmp_path / "config.json")


def test_config_is_read_from_the_checkpoint_not_hard_coded(minilm_dir):
    cfg = BertConfig.from_json(minilm_dir / "config.json")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (384, 6, 12, 1536)
    assert cfg.layer_norm_eps == 1e-12 and cfg.hidden_act == "gelu"
    with pytest.raises(Exception):
        cfg.hidden_size = 1  # frozen


def test_berta_shape_without_allocating():
    """The full BERTA config through jax.eval_shape: every shape, and the model card's ~128M parameters."""
    cfg = BertConfig.berta()
    shapes = param_shapes(cfg)
    assert shapes["embeddings.word.embedding"] == (55083, 768)
    assert shapes["layers.11.ffn_in.kernel"] == (768, 3072) and shapes["layers.11.ffn_out.kernel"] == (3072, 768)
    assert "layers.12.ffn_in.kernel" not in shapes
    n = sum(int(np.prod(s)) for s in shapes.values())
    h, i, v = 768, 3072, 55083
    per_layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h
    assert n == v * h + 512 * h + 2 * h + 2 * h + 12 * per_layer == 127_754_496  # + pooler 590k = the card's 128M
    out = jax.eval_shape(
        lambda: BertModel(cfg, rngs=nnx.Rngs(0))(jnp.zeros((2, 512), jnp.int32), jnp.ones((2, 512), jnp.int32))
    )
    assert out.shape == (2, 512, 768) and out.dtype == jnp.float32


def test_bfloat16_compute_keeps_float32_parameters_and_output(tiny_bert_dir):
    encoder = Encoder.from_pretrained(tiny_bert_dir, dtype=jnp.bfloat16)
    leaves = jax.tree_util.tree_leaves(encoder.params)
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.float32)}
    assert encoder.token_embeddings(np.array([[2, 5, 3]]), np.ones((1, 3))).dtype == jnp.float32
    stored = Encoder.from_pretrained(tiny_bert_dir, param_dtype=jnp.bfloat16)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(stored.params)} == {jnp.dtype(jnp.bfloat16)}


def _dots(encoder: Encoder) -> list:
    """Every matmul (dot_general equation) of the traced sentence-embedding forward."""
    fn = make_embed_fn(encoder.graphdef)
    ids = np.array([[2, 5, 6, 3]], np.int32)
    with jax.default_matmul_precision("bfloat16"):  # the tests run at "highest"; the model must not rely on it
        jaxpr = jax.make_jaxpr(fn)(encoder.params, ids, np.ones_like(ids), np.zeros_like(ids))
    found: list = []

    def walk(j) -> None:
        for eqn in j.eqns:
            if eqn.primitive.name == "dot_general":
                found.append(eqn)
            for sub in jax.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return found


def _dot_precisions(encoder: Encoder) -> set:
    """The precision of every matmul in the traced forward, whatever the global default is."""
    return {eqn.params["precision"] for eqn in _dots(encoder)}


def _dot_types(encoder: Encoder) -> set:
    """(operand dtypes, result dtype) of every matmul of the traced forward."""
    return {(tuple(v.aval.dtype.name for v in eqn.invars), eqn.outvars[0].aval.dtype.name) for eqn in _dots(encoder)}


def test_bfloat16_matmuls_take_bfloat16_and_accumulate_into_float32(tiny_bert_dir):
    """The form the matrix units run fast (AMX through oneDNN on CPUs, MXUs, tensor cores): bf16 operands,
    float32 result; float32 mode stays float32 throughout. Eight dots a layer: q, k, v, scores, context, out, two FFN."""
    bf16 = Encoder.from_pretrained(tiny_bert_dir, dtype=jnp.bfloat16)
    assert _dot_types(bf16) == {(("bfloat16", "bfloat16"), "float32")}
    assert len(_dots(bf16)) == 8  # the scanned layer body is traced once
    assert _dot_types(Encoder.from_pretrained(tiny_bert_dir)) == {(("float32", "float32"), "float32")}


def test_the_runtime_casts_bfloat16_kernels_once_with_the_same_result(tiny_bert_dir):
    """The compiled forwards take the matmul kernels already in bf16 (no convert per call and layer); what they
    compute is bit for bit what the model computes from its float32 parameters, casting as it goes."""
    encoder = Encoder.from_pretrained(tiny_bert_dir, dtype=jnp.bfloat16)
    stored = {jax.tree_util.keystr(p): leaf.dtype for p, leaf in jax.tree_util.tree_leaves_with_path(encoder.runtime.params)}
    assert {d for k, d in stored.items() if "kernel" in k} == {jnp.dtype(jnp.bfloat16)}
    assert {d for k, d in stored.items() if "kernel" not in k} == {jnp.dtype(jnp.float32)}
    ids = np.array([[2, 40, 41, 42, 3, 0], [2, 50, 3, 0, 0, 0]], np.int32)
    mask = (ids > 0).astype(np.int32)
    forward = jax.jit(make_hidden_fn(encoder.graphdef))
    cast_in_call = forward(encoder.params, ids, mask)  # float32 parameters, cast by the model in every call
    np.testing.assert_array_equal(np.asarray(forward(encoder.runtime.params, ids, mask)), np.asarray(cast_in_call))


def test_float32_matmuls_are_pinned_to_highest_precision(tiny_bert_dir):
    """JAX runs float32 matmuls as bf16 passes on TPU and TF32 on GPU by default: parity needs HIGHEST in
    every dot of the model itself, not only in a global setting."""
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    assert _dot_precisions(Encoder.from_pretrained(tiny_bert_dir)) == {highest}
    assert highest not in _dot_precisions(Encoder.from_pretrained(tiny_bert_dir, dtype=jnp.bfloat16))


# --- the pure function under jit / vmap / grad -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir):
    return Encoder.from_pretrained(tiny_bert_dir)


def _batch(encoder: Encoder, texts):
    b = encoder.tokenizer.hf(texts, padding="max_length", max_length=16, truncation=True, return_tensors="np")
    return b["input_ids"].astype(np.int32), b["attention_mask"].astype(np.int32), b["token_type_ids"].astype(np.int32)


def test_pure_embed_fn_matches_encode(tiny):
    fn = jax.jit(make_embed_fn(tiny.graphdef, pooling="mean", normalize=True))
    texts = ["один два", "three four five"]
    ids, mask, types = _batch(tiny, texts)
    np.testing.assert_allclose(np.asarray(fn(tiny.params, ids, mask, types)), tiny.encode(texts, prompt=""), atol=1e-6)


def test_pure_embed_fn_under_vmap_over_a_batch_of_batches(tiny):
    fn = make_embed_fn(tiny.graphdef)
    ids, mask, types = _batch(tiny, ["a b", "c", "d e f", "g"])
    stacked = [x.reshape(2, 2, -1) for x in (ids, mask, types)]
    many = jax.jit(jax.vmap(fn, in_axes=(None, 0, 0, 0)))(tiny.params, *stacked)
    np.testing.assert_allclose(np.asarray(many).reshape(4, -1), np.asarray(fn(tiny.params, ids, mask, types)), atol=1e-6)


def test_pure_embed_fn_gradient_matches_finite_differences(tiny):
    fn = make_embed_fn(tiny.graphdef)
    ids, mask, types = _batch(tiny, ["вопрос про кота", "ответ про кота"])

    def loss(params):
        e = fn(params, ids, mask, types)
        return -jnp.sum(e[0] * e[1])

    grads = jax.jit(jax.grad(loss))(tiny.params)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(tiny.params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    norm = float(jnp.sqrt(sum(jnp.sum(g * g) for g in leaves)))
    direction = jax.tree_util.tree_map(lambda g: g / norm, grads)  # unit vector along the gradient
    analytic = norm  # the directional derivative along it
    eps = 1e-3
    shift = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * d, tiny.params, direction)  # noqa: E731
    numeric = (float(loss(shift(eps))) - float(loss(shift(-eps)))) / (2 * eps)
    assert analytic > 0 and abs(numeric - analytic) <= 2e-2 * abs(analytic)


def test_attention_mask_is_the_only_source_of_padding(tiny):
    """A real token whose id equals the pad id (0) is attended to: the mask is never derived from ids."""
    ids = np.array([[2, 0, 7, 3]], np.int32)
    with_zero = np.asarray(tiny.token_embeddings(ids, np.ones((1, 4))))
    masked = np.asarray(tiny.token_embeddings(ids, np.array([[1, 0, 1, 1]])))
    assert np.abs(with_zero[0, 2] - masked[0, 2]).max() > 1e-4


def test_folder_files_are_read_for_pooling_and_context(minilm_dir, berta_shaped_dir):
    minilm = Encoder.from_pretrained(minilm_dir)
    assert (minilm.sentence.pooling, minilm.sentence.normalize, minilm.sentence.max_seq_length) == ("mean", True, 256)
    assert minilm.sentence.prompts == {} and minilm.sentence.default_prompt_name is None
    st = json.loads((berta_shaped_dir / "config_sentence_transformers.json").read_text())
    berta = Encoder.from_pretrained(berta_shaped_dir, max_seq_length=128, pooling="cls")
    assert berta.sentence.prompts == st["prompts"] and berta.sentence.default_prompt_name == "categorize_entailment"
    assert (berta.sentence.pooling, berta.sentence.max_seq_length) == ("cls", 128)
    with pytest.raises(ValueError, match="max_seq_length=513"):
        Encoder.from_pretrained(berta_shaped_dir, max_seq_length=513)


def test_row_chunked_forward_gives_the_same_hidden_states(tiny):
    from berta_jax import make_hidden_fn

    ids, mask, types = _batch(tiny, ["a b", "c", "d e f", "g h", "i", "j k l"])
    whole = jax.jit(make_hidden_fn(tiny.graphdef))(tiny.params, ids, mask, types)
    chunked = jax.jit(make_hidden_fn(tiny.graphdef, chunk_tokens=40))(tiny.params, ids, mask, types)  # 2 rows/chunk
    assert np.abs(np.asarray(whole) - np.asarray(chunked)).max() <= 1e-6
