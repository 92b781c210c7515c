"""The training losses against sentence-transformers' own loss classes, value and gradient.

Bars. Float32, as the trainer runs them: the value within 1e-6 x max(1, |loss|) of
sentence-transformers', and every gradient array (each embedding column, the projection's kernel and
bias) within 1e-6 x max(1, its largest entry) max-abs. A scaled loss lies near 7 and its gradients
near 8, where one float32 step is 4.8e-7 and 9.5e-7, and torch's own float32 value is up to 6e-7 from
the exact one (ours up to 1.3e-6): an absolute 1e-6 would fail on rounding alone. Float64 (the slow
tier): the same definitions to 1e-9 absolute, value and gradients, which leaves no room for a
differing formula. A zero embedding gives gradients of order 1/eps on both sides: relative 1e-5.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sentence_transformers import util
from sentence_transformers.sentence_transformer import losses as st

from berta_jax.errors import ConfigError
from berta_jax.train.losses import LOSS_NAMES, make_loss, matryoshka, options

B, D, T = 6, 16, 24  # batch, student width, a wider teacher's width
BARS = {"float32": 1e-6, "float64": 1e-9}
slow = pytest.mark.slow
PRECISIONS = ["float32", pytest.param("float64", marks=slow)]


class FakeModel(torch.nn.Module):
    """What sentence-transformers' losses need of a model: it returns the column's given embeddings."""

    def __init__(self, dim: int = D):
        super().__init__()
        self.dim = dim

    def forward(self, features):
        return {"sentence_embedding": features["embedding"]}

    def get_embedding_dimension(self):
        return self.dim

    def _get_untruncated_embedding_dimension(self):
        return self.dim

    @property
    def device(self):
        return torch.device("cpu")


def _columns(n: int, normalised: bool = False, seed: int = 0, dim: int = D) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    columns = [rng.standard_normal((B, dim)).astype(np.float32) for _ in range(n)]
    return [c / np.linalg.norm(c, axis=1, keepdims=True) for c in columns] if normalised else columns


def _torch_run(st_loss, columns, labels, params=(), call=None):
    """sentence-transformers' value and its gradients w.r.t. every column and then every param."""
    tensors = [torch.tensor(c, requires_grad=True) for c in columns]
    torch_labels = None if labels is None else torch.tensor(labels)
    if call is None:
        value = st_loss([{"embedding": t} for t in tensors], torch_labels)
    else:
        value = call(tensors, torch_labels)
    inputs = [*tensors, *params]
    grads = torch.autograd.grad(value, inputs, allow_unused=True)  # an unused column's gradient is 0
    return float(value.detach()), [(torch.zeros_like(x) if g is None else g).detach().numpy()
                                   for x, g in zip(inputs, grads)]


def _jax_run(loss, columns, labels, aux=None):
    fn = jax.jit(jax.value_and_grad(lambda cols, y, a: loss(cols, y, a), argnums=(0, 2)))
    value, (grads, aux_grads) = fn([jnp.asarray(c) for c in columns], labels, aux)
    assert all(g.dtype == c.dtype for g, c in zip(grads, columns))
    return float(value), [np.asarray(g) for g in grads], aux_grads


def _assert_close(precision, jax_value, jax_grads, torch_value, torch_grads):
    bar = BARS[precision]
    value_bar = bar * max(1.0, abs(torch_value)) if precision == "float32" else bar
    assert np.isfinite(jax_value) and abs(jax_value - torch_value) <= value_bar, (jax_value, torch_value)
    assert len(jax_grads) == len(torch_grads)
    for i, (g, ref) in enumerate(zip(jax_grads, torch_grads)):
        assert g.shape == ref.shape, (i, g.shape, ref.shape)
        scale = max(1.0, float(np.max(np.abs(ref)))) if precision == "float32" else 1.0
        assert np.max(np.abs(g - ref)) <= bar * scale, (i, np.max(np.abs(g - ref)), scale)


def _compare(precision, loss, st_loss, columns, labels=None, call=None, aux=None):
    """`loss` against `st_loss` (or `call`) in `precision`; with `aux`, also the projection's gradients,
    its values copied into `st_loss.projection` first."""
    dtype = np.dtype(precision)
    columns = [c.astype(dtype) for c in columns]
    labels = None if labels is None else np.asarray(labels).astype(dtype)
    params = ()
    if aux is not None:
        aux = jax.tree.map(lambda x: np.asarray(x, dtype), aux)
        owner = st_loss.loss if isinstance(st_loss, st.MatryoshkaLoss) else st_loss
        projection = owner.projection.to(getattr(torch, precision))
        projection.weight.data = torch.tensor(aux["projection"]["kernel"].T.copy())
        projection.bias.data = torch.tensor(aux["projection"]["bias"])
        params = (projection.weight, projection.bias)
    with jax.enable_x64(precision == "float64"):
        value, grads, aux_grads = _jax_run(loss, columns, labels, aux)
    torch_value, torch_grads = _torch_run(st_loss, columns, labels, params, call)
    if aux is not None:
        torch_grads[-2] = torch_grads[-2].T
        grads += [np.asarray(aux_grads["projection"]["kernel"]),
                  np.asarray(aux_grads["projection"]["bias"])]
    _assert_close(precision, value, grads, torch_value, torch_grads)


# --- in-batch negatives

@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("negatives, normalised", [
    (1, False), pytest.param(0, False, marks=slow), pytest.param(2, False, marks=slow),
    pytest.param(0, True, marks=slow), pytest.param(1, True, marks=slow),
    pytest.param(2, True, marks=slow)])
def test_mnrl_matches_with_0_1_2_hard_negatives(negatives, normalised, precision):
    columns = _columns(2 + negatives, normalised)
    _compare(precision, make_loss("mnrl"), st.MultipleNegativesRankingLoss(FakeModel()), columns)


MNRL_OPTIONS = {
    "dot": (dict(similarity="dot", scale=1.0), dict(similarity_fct=util.dot_score, scale=1.0)),
    "scale10": (dict(scale=10.0), dict(scale=10.0)),
    "symmetric": (dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"),) * 2,
    "gte": (dict(directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")),) * 2,
    **{f"hardness_{m}": (dict(hardness_mode=m, hardness_strength=5.0),) * 2
       for m in ("in_batch_negatives", "hard_negatives", "all_negatives")},
}
DEFAULT_TIER = ()  # every option case is in the slow tier; the default run has mnrl itself


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", [c if c in DEFAULT_TIER else pytest.param(c, marks=slow)
                                  for c in MNRL_OPTIONS])
def test_mnrl_options_match(case, precision):
    ours, theirs = MNRL_OPTIONS[case]
    _compare(precision, make_loss("mnrl", **ours),
             st.MultipleNegativesRankingLoss(FakeModel(), **theirs), _columns(4))


@slow
def test_mnrl_symmetric_equals_the_deprecated_symmetric_class():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        reference = st.MultipleNegativesSymmetricRankingLoss(FakeModel())
    loss = make_loss("mnrl", directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")
    _compare("float32", loss, reference, _columns(2))


class _ChunkedModel(FakeModel):
    """Indexable as a SentenceTransformer is (the cached loss looks at its first module)."""

    def __getitem__(self, index):
        return torch.nn.Identity()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("negatives", [2, pytest.param(0, marks=slow)])
def test_cached_mnrl_matches_sentence_transformers_cached_loss(negatives, precision):
    reference = st.CachedMultipleNegativesRankingLoss(_ChunkedModel(), mini_batch_size=4)
    loss = make_loss("cached_mnrl", mini_batch_size=4)
    assert loss.mini_batch_size == 4 and not loss.needs_labels

    def chunked(tensors, labels):  # the embeddings in mini-batches, as its forward caches them
        return reference.calculate_loss([list(t.split(4)) for t in tensors], labels)

    columns = _columns(2 + negatives)
    _compare(precision, loss, reference, columns, call=chunked)
    if negatives == 0:  # the slow tier: eager calls
        assert float(loss(columns, None)) == float(make_loss("mnrl")(columns, None))


# --- distillation from a teacher's vectors

@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("labels_shape", ["3d", pytest.param("2d", marks=slow)])
def test_mse_matches_over_every_column(labels_shape, precision):
    columns, teacher = _columns(3), _columns(3, seed=1)
    labels = teacher[0] if labels_shape == "2d" else np.stack(teacher, axis=1)
    _compare(precision, make_loss("mse"), st.MSELoss(FakeModel()), columns, labels)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("metric", ["cosine", pytest.param("mse", marks=slow),
                                    pytest.param("l2", marks=slow)])
def test_embed_distill_matches_with_a_projection_to_a_wider_teacher(metric, precision):
    columns, teacher = _columns(2), _columns(1, seed=1, dim=T)[0]
    loss = make_loss("embed_distill", distance_metric=metric)
    aux = loss.init_aux(jax.random.key(3), D, T)
    kernel, bias = aux["projection"]["kernel"], aux["projection"]["bias"]
    assert kernel.shape == (D, T) and bias.shape == (T,) and kernel.dtype == jnp.float32
    bound = 1 / np.sqrt(D)  # torch.nn.Linear's initialisation range, kernel and bias alike
    assert bound * 0.8 < float(jnp.max(jnp.abs(kernel))) <= bound
    assert float(jnp.max(jnp.abs(bias))) <= bound
    reference = st.EmbedDistillLoss(FakeModel(), metric, projection_dim=T)
    _compare(precision, loss, reference, columns, teacher, aux=aux)


@slow
def test_mse_with_a_projection_matches():
    columns, teacher = _columns(2), _columns(1, seed=1, dim=T)[0]
    loss = make_loss("mse")
    aux = loss.init_aux(jax.random.key(4), D, T)
    _compare("float32", loss, st.MSELoss(FakeModel(), projection_dim=T), columns, teacher, aux=aux)


@slow
@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("metric", ["cosine", "mse", "l2"])
def test_embed_distill_without_projection_matches(metric, precision):
    columns, teacher = _columns(2, normalised=True), _columns(1, seed=1)[0]
    loss = make_loss("embed_distill", distance_metric=metric)
    assert loss.init_aux(jax.random.key(0), D, D) is None
    assert loss.init_aux(jax.random.key(0), D, None) is None
    _compare(precision, loss, st.EmbedDistillLoss(FakeModel(), metric), columns, teacher)


def _relational_reference(tensors, labels):
    """Plain PyTorch: MSE between the student's and the teacher's in-batch cosine matrices."""
    student = torch.nn.functional.normalize(tensors[0], dim=-1)
    teacher = torch.nn.functional.normalize(labels, dim=-1)
    return torch.nn.functional.mse_loss(student @ student.T, teacher @ teacher.T)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("normalised", [False, pytest.param(True, marks=slow)])
def test_relational_matches_a_pytorch_reference_with_a_wider_teacher(normalised, precision):
    columns, teacher = _columns(2, normalised), _columns(1, seed=1, dim=T)[0]
    loss = make_loss("relational")
    assert loss.init_aux(jax.random.key(0), D, T) is None
    _compare(precision, loss, None, columns, teacher, call=_relational_reference)


# --- scores as labels

def _margin_labels(kind: str, negatives: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    if kind == "scores":
        return rng.standard_normal((B, negatives + 1)).astype(np.float32)
    return rng.standard_normal((B,) if kind == "flat" else (B, negatives)).astype(np.float32)


MARGIN_CASES = {  # (negatives, label kind, our options, sentence-transformers' options)
    "two_negatives_margins": (2, "margins", {}, {}),
    "one_negative_flat": (1, "flat", {}, {}),
    "two_negatives_scores": (2, "scores", {}, {}),
    "cos": (1, "margins", dict(similarity="cos"), dict(similarity_fct=util.pairwise_cos_sim)),
}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", [c if c == "two_negatives_margins" else pytest.param(c, marks=slow)
                                  for c in MARGIN_CASES])
def test_margin_mse_matches(case, precision):
    negatives, kind, ours, theirs = MARGIN_CASES[case]
    _compare(precision, make_loss("margin_mse", **ours), st.MarginMSELoss(FakeModel(), **theirs),
             _columns(2 + negatives), _margin_labels(kind, negatives))


COSENT_LABELS = np.array([0.1, 0.9, 0.5, 0.5, 0.0, 0.9], np.float32)  # ties included


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", ["cos", pytest.param("dot", marks=slow),
                                  pytest.param("normalised", marks=slow)])
def test_cosent_matches(case, precision):
    ours, theirs = ({}, {}) if case != "dot" else (
        dict(similarity="dot", scale=1.0), dict(similarity_fct=util.pairwise_dot_score, scale=1.0))
    _compare(precision, make_loss("cosent", **ours), st.CoSENTLoss(FakeModel(), **theirs),
             _columns(2, case == "normalised"), COSENT_LABELS)


# --- matryoshka

def _st_matryoshka(st_inner, dims, weights=None):
    """sentence-transformers' MatryoshkaLoss around `st_inner`, on the same model (it cuts that
    model's output)."""
    return st.MatryoshkaLoss(st_inner.model, st_inner, dims, weights)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_matryoshka_over_mnrl_matches_with_unsorted_dims_and_weights(precision):
    dims, weights = [4, 16], [0.25, 1.0]  # sentence-transformers sorts them, largest first
    reference = _st_matryoshka(st.MultipleNegativesRankingLoss(FakeModel()), dims, weights)
    loss = matryoshka(make_loss("mnrl"), dims, weights)
    assert loss.dims == (16, 4) and loss.weights == (1.0, 0.25) and not loss.needs_labels
    _compare(precision, loss, reference, _columns(2))


@slow
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_matryoshka_over_mse_cuts_teacher_vectors_as_wide_as_the_student(precision):
    columns, teacher = _columns(2), _columns(1, seed=1)[0]  # teacher as wide as the student: cut too
    reference = _st_matryoshka(st.MSELoss(FakeModel()), [16, 8, 4])
    _compare(precision, matryoshka(make_loss("mse"), [16, 8, 4]), reference, columns, teacher)


@slow
@pytest.mark.parametrize("inner, st_inner, labels", [
    ("cosent", st.CoSENTLoss, COSENT_LABELS),
    ("margin_mse", st.MarginMSELoss, _margin_labels("margins", 1)),
])
def test_matryoshka_over_score_losses_matches(inner, st_inner, labels):
    columns = _columns(3 if inner == "margin_mse" else 2)
    reference = _st_matryoshka(st_inner(FakeModel()), [16, 8], [1.0, 2.0])
    _compare("float32", matryoshka(make_loss(inner), [16, 8], [1.0, 2.0]), reference, columns,
             labels)


@slow
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_matryoshka_over_embed_distill_with_a_projection(precision):
    """At the full width, sentence-transformers' own MatryoshkaLoss; cut narrower, where its projection
    would fail on the shape, its EmbedDistillLoss on the cut vectors padded with zeros."""
    from sentence_transformers.sentence_transformer.losses.matryoshka import shrink

    columns, teacher = _columns(2), _columns(1, seed=1, dim=T)[0]
    inner = make_loss("embed_distill")
    aux = inner.init_aux(jax.random.key(7), D, T)
    reference = st.EmbedDistillLoss(FakeModel(), projection_dim=T)
    full = _st_matryoshka(reference, [16])
    _compare(precision, matryoshka(inner, [16]), full, columns, teacher, aux=aux)

    def padded(tensors, labels):  # the cuts chained as ST's forward makes them, then padded
        total, cut = 0.0, tensors
        for dim, weight in ((16, 1.0), (8, 0.5)):
            cut = [shrink(t, dim) for t in cut]
            wide = [torch.nn.functional.pad(t, (0, D - dim)) for t in cut]
            total = total + weight * reference.compute_loss_from_embeddings(wide, [labels] * 2)
        return total

    loss = matryoshka(inner, [16, 8], [1.0, 0.5])
    _compare(precision, loss, reference, columns, teacher, call=padded, aux=aux)


def test_matryoshka_carries_the_inner_loss_attributes():
    cached = matryoshka(make_loss("cached_mnrl", mini_batch_size=2), [16, 8])
    assert cached.mini_batch_size == 2 and matryoshka(make_loss("mnrl"), [8]).mini_batch_size is None
    assert cached.name == "matryoshka(cached_mnrl)" and not cached.needs_labels
    distill = matryoshka(make_loss("embed_distill"), [8])
    assert distill.needs_labels and distill.init_aux(jax.random.key(0), D, T)["projection"]["kernel"].shape == (D, T)


@slow
def test_matryoshka_over_cached_mnrl_equals_over_mnrl():
    columns = _columns(2)
    cached = matryoshka(make_loss("cached_mnrl", mini_batch_size=2), [16, 8])
    assert float(cached(columns, None)) == float(matryoshka(make_loss("mnrl"), [16, 8])(columns, None))


# --- jit, zero vectors

def _example(name: str):
    """A loss of each name with columns, labels and aux to call it on."""
    columns = _columns(3)
    labels = {"mse": _columns(1, seed=1)[0], "embed_distill": _columns(1, seed=1, dim=T)[0],
              "relational": _columns(1, seed=1, dim=T)[0], "margin_mse": _margin_labels("flat", 1),
              "cosent": COSENT_LABELS}.get(name)
    loss = make_loss(name)
    return loss, columns[:2] if name == "cosent" else columns, labels, loss.init_aux(
        jax.random.key(0), D, None if labels is None else labels.shape[-1])


@pytest.mark.parametrize("name", [n if n == "mse" else pytest.param(n, marks=slow)
                                  for n in LOSS_NAMES])
def test_jit_equals_eager(name):
    loss, columns, labels, aux = _example(name)
    grad = jax.value_and_grad(lambda c, a: loss(c, labels, a), argnums=(0, 1))
    eager, compiled = grad(columns, aux), jax.jit(grad)(columns, aux)
    for e, c in zip(jax.tree.leaves(eager), jax.tree.leaves(compiled)):
        np.testing.assert_allclose(np.asarray(c), np.asarray(e), rtol=1e-6, atol=1e-6)


def _with_zero_rows(columns):
    columns = [c.copy() for c in columns]
    columns[0][1] = 0.0  # an anchor
    columns[1][2] = 0.0  # a positive
    return columns


ZERO_CASES = {
    "mnrl": (lambda: (make_loss("mnrl"), st.MultipleNegativesRankingLoss(FakeModel()), None)),
    "cosent": (lambda: (make_loss("cosent"), st.CoSENTLoss(FakeModel()), COSENT_LABELS)),
    "embed_distill": (lambda: (make_loss("embed_distill"), st.EmbedDistillLoss(FakeModel()),
                               _columns(1, seed=1)[0])),
}


@pytest.mark.parametrize("case", [c if c == "mnrl" else pytest.param(c, marks=slow)
                                  for c in ZERO_CASES])
def test_a_zero_embedding_is_finite_and_matches(case):
    """Cosine of a zero vector: torch's eps makes it 0 with a gradient of order 1/eps, never NaN."""
    loss, reference, labels = ZERO_CASES[case]()
    columns = _with_zero_rows(_columns(2))
    value, grads, _ = _jax_run(loss, columns, labels)
    torch_value, torch_grads = _torch_run(reference, columns, labels)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
    assert abs(value - torch_value) <= 1e-6 * max(1.0, abs(torch_value))
    for g, ref in zip(grads, torch_grads):
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(ref))))


# --- refusals

def test_an_unknown_loss_name_is_refused_with_the_closest():
    with pytest.raises(ConfigError) as error:
        make_loss("mnlr")
    assert str(error.value) == ("loss.name: unknown loss 'mnlr'; did you mean 'mnrl'? (one of mnrl, "
                                "cached_mnrl, mse, embed_distill, relational, margin_mse, cosent)")
    with pytest.raises(ConfigError, match=r"^loss.name: unknown loss 'xyz'; \(one of mnrl, "):
        make_loss("xyz")


def test_an_unknown_option_is_refused_with_the_closest():
    with pytest.raises(ConfigError) as error:
        make_loss("mnrl", scael=20.0)
    assert str(error.value) == ("loss.mnrl: unknown option 'scael'; did you mean 'scale'? (one of "
                                "scale, similarity, directions, partition_mode, hardness_mode, "
                                "hardness_strength)")
    with pytest.raises(ConfigError, match=r"^loss.mse: unknown option 'scale'; this loss has none$"):
        make_loss("mse", scale=20.0)
    assert options("cached_mnrl")["mini_batch_size"] == 32 and options("cosent")["scale"] == 20.0


@pytest.mark.parametrize("name, given, message", [
    ("mnrl", dict(scale=float("nan")), "loss.mnrl.scale: must be a finite number > 0, got nan"),
    ("mnrl", dict(scale=0.0), "loss.mnrl.scale: must be a finite number > 0, got 0.0"),
    ("cosent", dict(scale=float("inf")), "loss.cosent.scale: must be a finite number > 0, got inf"),
    ("mnrl", dict(scale=True), "loss.mnrl.scale: must be a finite number > 0, got True"),
    ("mnrl", dict(similarity="cosine"),
     "loss.mnrl.similarity: unknown value 'cosine'; did you mean 'cos'? (one of cos, dot)"),
    ("mnrl", dict(directions=("doc_to_query",)),
     "loss.mnrl.directions: must include 'query_to_doc' (it holds the positive pair)"),
    ("mnrl", dict(directions=()), "loss.mnrl.directions: give at least one (of query_to_doc, "),
    ("mnrl", dict(directions="query_to_doc"), "loss.mnrl.directions: must be a list of directions, "
     "got the string 'query_to_doc'; write ['query_to_doc']"),
    ("mnrl", dict(directions=("query_to_doc", "query_to_query"), partition_mode="per_direction"),
     "loss.mnrl.partition_mode: 'per_direction' needs every direction to hold the positive pair"),
    ("mnrl", dict(hardness_mode="hard"), "loss.mnrl.hardness_mode: unknown value 'hard'"),
    ("mnrl", dict(hardness_strength=-1.0),
     "loss.mnrl.hardness_strength: must be a finite number >= 0, got -1.0"),
    ("cached_mnrl", dict(mini_batch_size=0),
     "loss.cached_mnrl.mini_batch_size: must be a whole number >= 1, got 0"),
    ("embed_distill", dict(distance_metric="cos"),
     "loss.embed_distill.distance_metric: unknown value 'cos'; did you mean 'cosine'?"),
    ("margin_mse", dict(similarity="l2"), "loss.margin_mse.similarity: unknown value 'l2'"),
])
def test_bad_option_values_are_refused_naming_the_option(name, given, message):
    with pytest.raises(ConfigError) as error:
        make_loss(name, **given)
    assert str(error.value).startswith(message), str(error.value)


@pytest.mark.parametrize("dims, weights, message", [
    ([], None, "matryoshka.dims: must be one or more whole numbers >= 1, got ()"),
    ([8, 0], None, "matryoshka.dims: must be one or more whole numbers >= 1, got (8, 0)"),
    ([8, 4], [1.0], "matryoshka.weights: 1 weights for 2 dims; give one weight per dim"),
    ([8], [float("nan")], "matryoshka.weights: each weight must be a finite number, got nan"),
])
def test_bad_matryoshka_dims_and_weights_are_refused(dims, weights, message):
    with pytest.raises(ConfigError) as error:
        matryoshka(make_loss("mnrl"), dims, weights)
    assert str(error.value) == message


def test_matryoshka_dims_wider_than_the_embeddings_are_refused_at_call_time():
    loss = matryoshka(make_loss("mnrl"), [32, 8])
    with pytest.raises(ConfigError, match=r"^matryoshka.dims: 32 is wider than the embeddings' 16 "
                                          r"dimensions; use dims <= 16$"):
        loss(_columns(2), None)


@pytest.mark.parametrize("name, column", [
    ("mse", "the teacher's vectors"), ("embed_distill", "the teacher's vectors"),
    ("relational", "the teacher's vectors of the first column"),
    ("margin_mse", "the teacher's margins"), ("cosent", "one gold score per pair"),
])
def test_a_loss_that_needs_labels_refuses_a_batch_without_them(name, column):
    loss = make_loss(name)
    assert loss.needs_labels
    with pytest.raises(ConfigError, match=rf"^loss '{name}': needs a label column \({column}"):
        loss(_columns(3), None)
    with pytest.raises(ConfigError, match=rf"^loss 'matryoshka\({name}\)'|^loss '{name}'"):
        matryoshka(loss, [8])(_columns(3), None)


def test_shape_mistakes_are_refused_naming_what_is_expected():
    columns = _columns(3)
    with pytest.raises(ConfigError, match=r"^loss 'mse': the student has 16 dimensions and the "
                                          r"teacher 24; create the projection with "
                                          r"init_aux\(key, 16, 24\) and pass it as aux$"):
        make_loss("mse")(columns, _columns(1, dim=T)[0])
    with pytest.raises(ConfigError, match=r"^loss 'margin_mse': labels of shape \(6, 5\) are "
                                          r"neither the teacher's margins \(6, 1\) nor its scores"):
        make_loss("margin_mse")(columns[:3][:2] + [columns[2]], np.zeros((B, 5)))
    with pytest.raises(ConfigError, match=r"^loss 'mnrl': needs at least 2 embedding columns"):
        make_loss("mnrl")(columns[:1], None)
    with pytest.raises(ConfigError, match=r"^loss 'mse': labels of shape \(6, 2, 16\) are not"):
        make_loss("mse")(columns, np.zeros((B, 2, D)))
    with pytest.raises(ConfigError, match=r"^loss 'cosent': expects 6 labels \(one per pair\)"):
        make_loss("cosent")(columns[:2], np.zeros(4))
