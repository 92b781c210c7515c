"""Token-budget batching, bounded compiled shapes, device sharding and the persistent compile cache.

Speed itself is measured in benchmarks/, not here: these tests pin the properties that make it fast
without changing any number.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from berta_jax import Encoder
from berta_jax.runtime.batching import LENGTH_BUCKETS, BatchPlanner
from berta_jax.runtime.compile_cache import enable_compilation_cache
from berta_jax.runtime.packing import TOKENS_PER_SEGMENT, PackingPlanner
from tests.helpers import cli_env, worker
from tests.texts import ALL, LONG


def _lengths(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.minimum(rng.integers(3, 700, size=n), 512)


def _shapes(planner: BatchPlanner, lengths) -> set[tuple[int, int]]:
    return {(step.n_rows, step.length) for step in planner.plan(lengths)}


@pytest.mark.parametrize("budget", [512, 2048, 8192, 32768])
def test_plan_covers_every_text_once_within_the_budget(budget):
    lengths = _lengths(3000)
    planner = BatchPlanner(max_seq_length=512, max_batch_tokens=budget)
    plan = planner.plan(lengths)
    assert sorted(i for step in plan for i in step.texts) == list(range(len(lengths)))
    for step in plan:
        assert step.segments == 1 and all(len(row) == 1 for row in step.rows)
        assert step.n_rows * step.length <= budget and len(step.texts) <= step.n_rows
        assert lengths[step.texts].max() <= step.length and step.length in LENGTH_BUCKETS
    assert sum(len(s.texts) < s.n_rows for s in plan) <= len(LENGTH_BUCKETS)  # one short batch per bucket


def test_compiled_shapes_are_bounded_whatever_the_number_of_texts():
    planner = BatchPlanner(max_seq_length=512, max_batch_tokens=4096)
    small, large = _lengths(100), _lengths(10_000, seed=1)
    assert set(LENGTH_BUCKETS) == {step.length for step in planner.plan(small)}  # the same length range
    assert len(_shapes(planner, large)) <= len(_shapes(planner, small)) == len(LENGTH_BUCKETS)
    assert len({length for _, length in _shapes(planner, large)}) == len(_shapes(planner, large))  # one per bucket


def test_padding_overhead_is_small_for_a_mixed_workload():
    lengths = _lengths(10_000)
    plan = BatchPlanner(max_seq_length=512, max_batch_tokens=4096).plan(lengths)
    padded = sum(step.n_rows * step.length for step in plan)
    assert padded / lengths.sum() < 1.2


def test_rows_divide_by_the_device_count():
    planner = BatchPlanner(max_seq_length=512, max_batch_tokens=2048, num_devices=4)
    for step in planner.plan(_lengths(777)):
        assert step.n_rows % 4 == 0 and step.n_rows >= len(step.texts)
    assert planner.plan(np.array([5]))[0].n_rows == 4  # one text still fills a row per device


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_batch_tokens=256), "max_batch_tokens=256 is smaller than max_seq_length=512"),
        (dict(max_batch_tokens=0), "max_batch_tokens must be a positive integer"),
        (dict(max_batch_tokens=-5), "max_batch_tokens must be a positive integer"),
        (dict(max_batch_tokens=2048, batch_size=0), "batch_size must be a positive integer"),
    ],
)
def test_bad_batch_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchPlanner(max_seq_length=512, **kwargs)


def test_encoder_refuses_bad_batch_settings_up_front(tiny_bert_dir):
    with pytest.raises(ValueError, match="max_batch_tokens=16 is smaller than max_seq_length=32"):
        Encoder.from_pretrained(tiny_bert_dir, max_batch_tokens=16)
    encoder = Encoder.from_pretrained(tiny_bert_dir)
    with pytest.raises(ValueError, match="max_batch_tokens must be a positive integer"):
        encoder.encode(["x"], max_batch_tokens=0)


@pytest.mark.slow
def test_token_budget_does_not_change_embeddings_and_counts_shapes(minilm_dir):
    encoder = Encoder.from_pretrained(minilm_dir)
    texts = ALL * 3
    reference = encoder.encode(texts, max_batch_tokens=256)
    for budget in (512, 1024, 8192):
        result = encoder.encode_detailed(texts, max_batch_tokens=budget)
        assert np.abs(result.embeddings - reference).max() <= 1e-6
        assert result.padded_tokens >= result.num_tokens.sum()
    assert 0 < encoder.compile_stats.count <= 4 * len(LENGTH_BUCKETS)  # four budgets, each bounded


def test_unwritable_cache_dir_warns_and_carries_on(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.warns(RuntimeWarning, match="not writable"):
        assert enable_compilation_cache(blocker / "cache") is None


def test_a_cache_dir_others_may_write_is_not_used(tmp_path):
    """JAX runs an entry found under a program's key without checking it holds that program: a cache another user
    can write is refused (with a warning), and one berta-jax creates is private."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.warns(RuntimeWarning, match=r"writable by others \(mode 777\).*continuing without it"):
        assert enable_compilation_cache(shared) is None
    shared.chmod(0o775)
    with pytest.warns(RuntimeWarning, match="mode 775"):
        assert enable_compilation_cache(shared) is None


def _run_worker(model: Path, cache: Path, devices: int = 1) -> dict:
    return worker("compile_cache", str(model), str(cache),
                  env=cli_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"))


@pytest.mark.slow
def test_second_process_loads_programs_from_the_persistent_cache(minilm_dir, tmp_path):
    first = _run_worker(minilm_dir, tmp_path / "xla")
    second = _run_worker(minilm_dir, tmp_path / "xla")
    assert first["shapes"] > 0 and first["hits"] == 0
    assert second["hits"] == second["shapes"] == first["shapes"]  # nothing compiled again
    assert np.array_equal(np.array(first["emb"]), np.array(second["emb"]))
    assert any((tmp_path / "xla").iterdir()) and (tmp_path / "xla").stat().st_mode & 0o777 == 0o700


def test_four_devices_give_the_same_embeddings_as_one(minilm, minilm_dir, tmp_path):
    texts_count = len(ALL)
    assert texts_count % 4 != 0  # a batch that does not divide by the device count
    assert len(minilm.devices) == 1  # this process: one CPU device
    four = _run_worker(minilm_dir, tmp_path / "xla4", devices=4)
    assert four["devices"] == 4
    assert np.abs(minilm.encode(ALL) - np.array(four["emb"])).max() <= 1e-6


def test_long_texts_in_a_tight_budget_are_still_exact(minilm):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tight = minilm.encode(LONG + ["x"], max_batch_tokens=256)  # one 256-token row per batch
        loose = minilm.encode(LONG + ["x"], max_batch_tokens=65536)
    assert np.abs(tight - loose).max() <= 1e-6


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return Encoder.from_pretrained(minilm_dir)


def test_every_forward_shares_one_copy_of_the_parameters(tiny_bert_dir):
    """Sentence vectors, normalised or not, and hidden states each compile their own program, but all of them run
    on the one replicated copy of the weights the runtime placed on the devices."""
    import jax

    encoder = Encoder.from_pretrained(tiny_bert_dir)
    placed = jax.tree_util.tree_leaves(encoder.runtime.params)
    encoder.encode(["x y"], normalize=False)
    encoder.encode(["x y"])
    encoder.token_embeddings(np.array([[2, 5, 3]]), np.ones((1, 3)))
    assert encoder.compile_stats.count == 3
    assert all(a is b for a, b in zip(placed, jax.tree_util.tree_leaves(encoder.runtime.params), strict=True))


# --- packed rows --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget, devices, batch_size", [(512, 1, None), (2048, 1, None), (8192, 4, None),
                                                          (2048, 2, 5)])
def test_packing_covers_every_text_once_within_rows_segments_and_budget(budget, devices, batch_size):
    lengths = _lengths(3000, seed=2)
    planner = PackingPlanner(max_seq_length=512, max_batch_tokens=budget, num_devices=devices, batch_size=batch_size)
    plan = planner.plan(lengths)
    covered = sorted(i for step in plan for row in step.rows for i in row)
    assert covered == list(range(len(lengths)))
    for step in plan:
        assert step.n_rows * step.length <= budget and step.n_rows % devices == 0 and len(step.rows) <= step.n_rows
        assert step.segments <= step.length // TOKENS_PER_SEGMENT and all(len(row) <= step.segments for row in step.rows)
        assert all(lengths[row].sum() <= step.length for row in step.rows)
        if batch_size:
            assert sum(map(len, step.rows)) <= batch_size


def test_packing_removes_padding_over_a_bounded_set_of_shapes():
    """Padded / real tokens <= 1.05 (1.29 with one text per row for the same lengths), at most two shapes per row
    length whatever the number of texts."""
    for n, seed in ((10_000, 0), (2_000, 3)):
        lengths = _lengths(n, seed)
        for budget in (2048, 4096):
            planner = PackingPlanner(max_seq_length=512, max_batch_tokens=budget)
            plan = planner.plan(lengths)
            assert sum(s.n_rows * s.length for s in plan) / lengths.sum() <= 1.05
            shapes = {(s.n_rows, s.length, s.segments) for s in plan}
            assert len(shapes) <= 2 * len(planner.row_lengths()) <= 8
            assert all(sum(1 for _, length, _ in shapes if length == r) <= 2 for r in planner.row_lengths())


def test_packed_texts_embed_as_if_alone(tiny_bert_dir):
    """A packed row's texts do not see each other: each pooling branch (sums, first token, max) gives the unpacked
    numbers (every mode against sentence-transformers: test_encoder)."""
    for pooling in ("mean", "cls", "max"):
        packed = Encoder.from_pretrained(tiny_bert_dir, pooling=pooling)
        alone = Encoder(packed.model, packed.tokenizer, packed.sentence, packing=False)
        texts = ALL + ["a", "b c", ""]
        result = packed.encode_detailed(texts)
        assert result.padded_tokens < alone.encode_detailed(texts).padded_tokens
        assert np.abs(result.embeddings - alone.encode(texts)).max() <= 1e-6, pooling


class _Device:
    def __init__(self, platform: str, bytes_limit: int | None):
        self.platform, self._limit = platform, bytes_limit

    def memory_stats(self):
        return None if self._limit is None else {"bytes_limit": self._limit, "bytes_in_use": 0}


@pytest.mark.parametrize("platform, gib, devices, expected", [
    ("cpu", None, 1, 2048), ("cpu", None, 4, 8192),  # cache-sized batches on CPU, whatever the memory
    ("gpu", 132, 1, 131072),  # an H200 (about 132 GiB usable): 1/8 of it over 98 KiB a token, as a power of two
    ("gpu", 16, 1, 16384), ("tpu", 2, 4, 4 * 8192),  # a small device: never below 8192 a device
    ("gpu", 2048, 1, 262144), ("gpu", None, 2, 32768)])  # capped; a device that reports no memory: 16384
def test_the_default_token_budget_follows_the_device_memory(platform, gib, devices, expected):
    from berta_jax.models.bert.config import BertConfig
    from berta_jax.runtime.encoder import activation_bytes_per_token, default_batch_tokens

    cfg = BertConfig(vocab_size=55_000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, max_position_embeddings=512)
    assert activation_bytes_per_token(cfg, 512) == 4 * (2 * 12 * 512 + 8 * 768 + 2 * 3072)
    limit = None if gib is None else gib * 2 ** 30
    assert default_batch_tokens([_Device(platform, limit)] * devices, 512, cfg) == expected


def test_very_short_texts_pack_with_bounded_padding():
    """100,000 texts of 1-3 words (3-7 tokens with [CLS] and [SEP]) pad at most 1.10x; empty texts ([CLS] [SEP])
    at most 2x, the bound of `TOKENS_PER_SEGMENT`."""
    planner = PackingPlanner(max_seq_length=256, max_batch_tokens=2048)
    for lengths, bound in ((np.random.default_rng(0).integers(3, 8, size=100_000), 1.10),
                           (np.full(100_000, 2), TOKENS_PER_SEGMENT / 2 + 0.005)):
        plan = planner.plan(lengths)
        assert sorted(i for step in plan for row in step.rows for i in row) == list(range(len(lengths)))
        assert sum(step.n_rows * step.length for step in plan) / lengths.sum() <= bound
