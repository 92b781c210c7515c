"""Token-budget batching, bounded compiled shapes, device sharding and the persistent compile cache.

Speed itself is measured in benchmarks/, not here: these tests pin the properties that make it fast
without changing any number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from berta_jax import Encoder
from berta_jax.batching import LENGTH_BUCKETS, BatchPlanner
from berta_jax.compile_cache import enable_compilation_cache
from tests.texts import ALL, LONG

REPO = Path(__file__).resolve().parent.parent


def _lengths(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.minimum(rng.integers(3, 700, size=n), 512)


def _shapes(planner: BatchPlanner, lengths) -> set[tuple[int, int]]:
    return {(rows, length) for _, rows, length in planner.plan(lengths)}


@pytest.mark.parametrize("budget", [512, 2048, 8192, 32768])
def test_plan_covers_every_text_once_within_the_budget(budget):
    lengths = _lengths(3000)
    planner = BatchPlanner(max_seq_length=512, max_batch_tokens=budget)
    plan = planner.plan(lengths)
    covered = np.concatenate([take for take, _, _ in plan])
    assert sorted(covered.tolist()) == list(range(len(lengths)))
    for take, rows, length in plan:
        assert rows * length <= budget and len(take) <= rows
        assert lengths[take].max() <= length and length in LENGTH_BUCKETS
    assert sum(len(take) < rows for take, rows, _ in plan) <= len(LENGTH_BUCKETS)  # one short batch per bucket


def test_compiled_shapes_are_bounded_whatever_the_number_of_texts():
    planner = BatchPlanner(max_seq_length=512, max_batch_tokens=4096)
    small, large = _lengths(100), _lengths(10_000, seed=1)
    assert set(LENGTH_BUCKETS) == {b for _, _, b in planner.plan(small)}  # the same length range
    assert len(_shapes(planner, large)) <= len(_shapes(planner, small)) == len(LENGTH_BUCKETS)
    assert len({length for _, length in _shapes(planner, large)}) == len(_shapes(planner, large))  # one per bucket


def test_padding_overhead_is_small_for_a_mixed_workload():
    lengths = _lengths(10_000)
    plan = BatchPlanner(max_seq_length=512, max_batch_tokens=4096).plan(lengths)
    padded = sum(rows * length for _, rows, length in plan)
    assert padded / lengths.sum() < 1.2


def test_rows_divide_by_the_device_count():
    planner = BatchPlanner(max_seq_length=512, max_batch_tokens=2048, num_devices=4)
    for take, rows, length in planner.plan(_lengths(777)):
        assert rows % 4 == 0 and rows >= len(take)
    assert planner.plan(np.array([5]))[0][1] == 4  # one text still fills a row per device


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


_WORKER = """
import json, os, sys, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
import jax
from berta_jax import Encoder
sys.path.insert(0, {repo!r})
from tests.texts import ALL
enc = Encoder.from_pretrained({model!r}, compilation_cache={cache!r})
e = enc.encode(ALL)
print(json.dumps(dict(devices=len(jax.local_devices()), shapes=enc.compile_stats.count,
                      hits=enc.compile_stats.cache_hits, emb=e.tolist())))
"""


def _run_worker(model: Path, cache: Path, devices: int = 1) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    code = _WORKER.format(repo=str(REPO), model=str(model), cache=str(cache))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_second_process_loads_programs_from_the_persistent_cache(minilm_dir, tmp_path):
    first = _run_worker(minilm_dir, tmp_path / "xla")
    second = _run_worker(minilm_dir, tmp_path / "xla")
    assert first["shapes"] > 0 and first["hits"] == 0
    assert second["hits"] == second["shapes"] == first["shapes"]  # nothing compiled again
    assert np.array_equal(np.array(first["emb"]), np.array(second["emb"]))
    assert any((tmp_path / "xla").iterdir())


def test_four_devices_give_the_same_embeddings_as_one(minilm_dir, tmp_path):
    texts_count = len(ALL)
    assert texts_count % 4 != 0  # a batch that does not divide by the device count
    one = _run_worker(minilm_dir, tmp_path / "xla1", devices=1)
    four = _run_worker(minilm_dir, tmp_path / "xla4", devices=4)
    assert (one["devices"], four["devices"]) == (1, 4)
    assert np.abs(np.array(one["emb"]) - np.array(four["emb"])).max() <= 1e-6


def test_long_texts_in_a_tight_budget_are_still_exact(minilm):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tight = minilm.encode(LONG + ["x"], max_batch_tokens=256)  # one 256-token row per batch
        loose = minilm.encode(LONG + ["x"], max_batch_tokens=65536)
    assert np.abs(tight - loose).max() <= 1e-6


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return Encoder.from_pretrained(minilm_dir)


def test_forwards_share_one_copy_of_the_parameters(tiny_bert_dir):
    """Each pooling mode has its own compiled forward, but never its own copy of the weights on the devices."""
    import jax

    encoder = Encoder.from_pretrained(tiny_bert_dir)
    mean, cls = encoder.forward(pooling="mean"), encoder.forward(pooling="cls", normalize=False)
    assert mean is not cls
    pairs = list(zip(jax.tree_util.tree_leaves(mean.params), jax.tree_util.tree_leaves(cls.params), strict=True))
    assert pairs and all(a is b for a, b in pairs)
