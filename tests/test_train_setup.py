"""Training's settings, data and batch plan: every bad input a one-line error naming the key, file,
row or column; the plan deterministic from the seed, with no repeated text in a batch."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from berta_jax.errors import ConfigError, InputError
from berta_jax.train.config import TrainConfig, parse_override
from berta_jax.train.data import read_train_set
from berta_jax.train.optim import decay_mask, learning_rate
from berta_jax.train.plan import BatchPlan, dataset_batches

BASE = {"model": "m", "output_dir": "o", "steps": 10, "data": {"train": ["x.jsonl"]}}


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return str(path)


def test_overrides_are_toml_values_and_defaults_are_the_hf_trainers():
    cfg = TrainConfig.from_dict(BASE, ["optim.lr=2e-5", "data.shuffle=false", "model=/a b/c",
                                       "data.train=['a.jsonl', 'b.jsonl']", "loss.scale=10"])
    assert cfg["optim.lr"] == 2e-5 and cfg["data.shuffle"] is False and cfg["model"] == "/a b/c"
    assert cfg["data.train"] == ["a.jsonl", "b.jsonl"] and cfg.section("loss") == {
        "name": "mnrl", "matryoshka_dims": None, "matryoshka_weights": None,
        "gather_across_devices": True, "scale": 10}
    # the Hugging Face Trainer's AdamW defaults
    assert (cfg["optim.lr"], cfg["optim.eps"], cfg["optim.weight_decay"], cfg["optim.max_grad_norm"]) == (
        2e-5, 1e-8, 0.0, 1.0)
    assert parse_override("optim.lr=1") == ("optim.lr", 1)
    assert TrainConfig.from_dict(BASE, ["optim.lr=1"])["optim.lr"] == 1.0  # an int where a float goes


@pytest.mark.parametrize("override, message", [
    ("optm.lr=1e-4", "optm.lr: unknown setting; did you mean 'optim.lr'?"),
    ("optim.lr=-1", "optim.lr: -1.0 must be > 0"),
    ("optim.lr=nan", "optim.lr: expected a finite number"),
    ("steps=1.5", "steps: expected int, got 1.5"),
    ("data.shuffle=1", "data.shuffle: expected bool, got 1"),
    ("optim.schedule=step", "optim.schedule: 'step' must be one of constant, linear, cosine"),
    ("model_config.hidden_dropout_prob=1.0", "model_config.hidden_dropout_prob: 1.0 must be in [0, 1)"),
    ("lr", "'lr': an override is KEY=VALUE"),
])
def test_a_bad_setting_is_named(override, message):
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict(BASE, [override])
    assert message in str(e.value)


def test_a_missing_required_key_and_a_bad_toml_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="`steps` is required"):
        TrainConfig.from_dict({"model": "m", "output_dir": "o"})
    bad = tmp_path / "run.toml"
    bad.write_text("model = \n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid TOML"):
        TrainConfig.from_toml(bad)


def test_resume_compares_only_what_changes_the_numbers():
    cfg = TrainConfig.from_dict(BASE)
    stored = dict(cfg.values)
    assert TrainConfig.from_dict(BASE, ["checkpoint.keep=9", "log.every=5"]).changed_keys(stored) == []
    assert TrainConfig.from_dict(BASE, ["optim.lr=1e-3", "seed=3"]).changed_keys(stored) == ["optim.lr", "seed"]


def test_reading_a_dataset_checks_every_row(tmp_path):
    good = write_jsonl(tmp_path / "a.jsonl", [{"anchor": "q1", "positive": "d1", "label": [0.5, 1.0]},
                                              {"anchor": "q2", "positive": "d2", "label": [1.0, 0.0]}])
    data = read_train_set("train", [good], None)
    assert data.text_columns == ["anchor", "positive"] and data.label_column == "label"
    assert data.labels.shape == (2, 2) and data.texts[1] == ["d1", "d2"] and data.where(1) == f"{good} row 2"
    table = pa.table({"a": ["x", "y"], "score": [0.1, 0.9]})
    pq.write_table(table, tmp_path / "b.parquet")
    scored = read_train_set("s", [str(tmp_path / "*.parquet")], ["a", "score"])
    np.testing.assert_allclose(scored.labels, [0.1, 0.9])

    cases = [
        ([{"anchor": "q", "positive": "d"}], ["anchor", "negative"], "no column 'negative'; it has anchor, positive"),
        ([{"anchor": "q", "positive": None}], None, "row 1: column 'positive' is empty (null)"),
        ([{"anchor": "q", "positive": "d"}, {"anchor": 3, "positive": "d"}], None, "row 2: column 'anchor' is a int, not text"),
        ([{"a": "q", "label": [1.0, 2.0]}, {"a": "r", "label": [1.0]}], None, "row 2: column 'label' has 1 dimensions, row 1 has 2"),
        ([{"a": "q", "label": [1.0, "NaN"]}], None, "column 'label'"),
        ([{"label": 1.0, "a": "q"}], ["label", "a"], "the label column (label or score) comes last"),
    ]
    for i, (rows, columns, message) in enumerate(cases):
        path = write_jsonl(tmp_path / f"bad{i}.jsonl", rows)
        with pytest.raises(InputError) as e:
            read_train_set("train", [path], columns)
        assert path in str(e.value) and message in str(e.value), str(e.value)
    nan = tmp_path / "nan.jsonl"
    nan.write_text('{"a": "q", "label": [1.0, NaN]}\n')
    with pytest.raises(InputError, match="row 1: column 'label' holds NaN or inf"):
        read_train_set("train", [str(nan)], None)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.string())}), empty)
    with pytest.raises(InputError, match="has no rows"):
        read_train_set("train", [str(empty)], None)


def test_batches_hold_no_repeated_text_and_follow_the_seed():
    anchors = ["a", "b", "a", "c", "d", "e", "b", "f", "g", "h"]
    positives = [f"p{i}" for i in range(10)]
    texts = [anchors, positives]
    rng = np.random.default_rng(0)
    batches = dataset_batches(texts, 3, rng, no_duplicates=True)
    assert len(batches) == 3
    for batch in batches:
        seen = [t for column in texts for t in (column[i] for i in batch)]
        assert len(seen) == len(set(seen))
    plan = BatchPlan([texts], ["train"], 3, seed=5, shuffle=True, no_duplicates=True, sampler="proportional")
    again = BatchPlan([texts], ["train"], 3, seed=5, shuffle=True, no_duplicates=True, sampler="proportional")
    other = BatchPlan([texts], ["train"], 3, seed=6, shuffle=True, no_duplicates=True, sampler="proportional")
    steps = [plan[k][1].rows.tolist() for k in range(8)]  # past the first epoch
    assert steps == [again[k][1].rows.tolist() for k in range(8)]
    assert steps != [other[k][1].rows.tolist() for k in range(8)]
    assert plan[3][0] == 1  # epoch 1 starts after epoch 0's three batches
    with pytest.raises(ConfigError, match="data.batch_size=11 leaves no full batch"):
        BatchPlan([texts], ["train"], 11, seed=0, shuffle=False, no_duplicates=False, sampler="proportional")


def test_round_robin_and_proportional_take_one_dataset_per_batch():
    a = [[f"a{i}" for i in range(6)]]
    b = [[f"b{i}" for i in range(2)]]
    rr = BatchPlan([a, b], ["a", "b"], 2, seed=0, shuffle=False, no_duplicates=False, sampler="round_robin")
    assert [rr[k][1].dataset for k in range(2)] == [0, 1]
    prop = BatchPlan([a, b], ["a", "b"], 2, seed=0, shuffle=True, no_duplicates=False, sampler="proportional")
    assert sorted(prop[k][1].dataset for k in range(4)) == [0, 0, 0, 1]


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_learning_rate_equals_transformers_schedules(schedule):
    total, warmup, lr = 20, 4, 1e-3
    ours = learning_rate(lr, schedule, warmup, total)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=lr)
    make = {"linear": get_linear_schedule_with_warmup, "cosine": get_cosine_schedule_with_warmup}.get(schedule)
    sched = make(opt, warmup, total) if make else torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, s / warmup))
    for step in range(total + 2):
        assert abs(float(ours(step)) - sched.get_last_lr()[0]) <= 1.2e-7 * lr, step  # float32 rounding
        opt.step()
        sched.step()


def test_weight_decay_skips_biases_and_layer_norms():
    params = {"embeddings": {"norm": {"scale": 1, "bias": 1}, "word": {"embedding": 1}},
              "layers": {"ffn_in": {"kernel": 1, "bias": 1}, "ln_ffn": {"scale": 1, "bias": 1}}}
    mask = decay_mask(params)
    assert mask == {"embeddings": {"norm": {"scale": False, "bias": False}, "word": {"embedding": True}},
                    "layers": {"ffn_in": {"kernel": True, "bias": False}, "ln_ffn": {"scale": False, "bias": False}}}
