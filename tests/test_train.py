"""Training runs end to end: a sentence-transformers folder out that embeds as berta-jax does, the
same losses on 4 devices as on one, bit-identical parameters after kill -9 and --resume, GradCache
equal to the plain loss, and each refusal a one-line error naming what is at fault.

Bars: the exported folder embeds within 1e-5 of berta-jax (max abs, float32, as the inference
parity); 4 devices vs 1: the loss of every step within 1e-5; a resumed run: the same bytes of
model.safetensors and the same logged losses as the run that was never stopped (same device count,
CPU); the cached loss: value within 1e-6, every gradient within 1e-5 relative (Frobenius, per
tensor) of the plain form's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from berta_jax import Encoder
from berta_jax.errors import ConfigError, JobError, TrainError
from berta_jax.job.lock import LocalLock
from berta_jax.train import setup
from berta_jax.train.config import TrainConfig
from berta_jax.train.step import StepSpec, batch_loss
from berta_jax.train.trainer import export_checkpoint, train
from tests.helpers import berta_jax, cli_env, start_berta_jax, wait_for

STEPS = 6
TOPICS = ["кошки", "собаки", "поезда", "погода", "музыка", "футбол", "chess", "coffee", "rivers", "tea",
          "bread", "clouds"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("train_data") / "pairs.jsonl"
    rows = [{"anchor": f"что нового про {t} {i}?", "positive": f"{t}: новость номер {i} about {t}"}
            for i in range(4) for t in TOPICS]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return path


def settings(model, data, out, **extra) -> dict:
    tree = {
        "model": str(model), "output_dir": str(out), "steps": STEPS, "seed": 3,
        "data": {"train": [str(data)], "batch_size": 8},
        "prompts": {"anchor": "search_query", "positive": "search_document"},
        "optim": {"lr": 1e-3, "warmup_steps": 2, "weight_decay": 0.01},
        "checkpoint": {"every": 2, "keep": 2}, "log": {"tensorboard": True},
    }
    for key, value in extra.items():
        section, _, name = key.partition("__")
        if name:
            tree.setdefault(section, {})[name] = value
        else:
            tree[key] = value
    return tree


def toml_file(path, tree) -> str:
    lines = []
    for key, value in tree.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {json.dumps(value)}")
    for section, values in tree.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def finished(tiny_bert_dir, pairs, tmp_path_factory):
    """A whole run, dropout on (the tiny model's 0.1), evaluated on STS pairs every 3 steps: the
    reference the other runs must equal (they leave the evaluation out: it does not change the
    weights)."""
    out = tmp_path_factory.mktemp("run") / "out"
    sts = out.parent / "sts.jsonl"
    rows = [{"sentence1": f"что нового про {t}?", "sentence2": f"{t}: новость about {u}", "score": float(t == u) + i % 3}
            for i, (t, u) in enumerate(zip(TOPICS, TOPICS[:6] + TOPICS[:6]))]
    sts.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    tree = settings(tiny_bert_dir, pairs, out, eval={"sts": str(sts), "every": 3, "metric": "sts/spearman_cosine"})
    result = train(TrainConfig.from_dict(tree), progress=False, log=lambda m: None)
    return tree, result


def without_eval(tree: dict, out) -> dict:
    return {**{k: v for k, v in tree.items() if k != "eval"}, "output_dir": str(out)}


def test_a_run_writes_metrics_checkpoints_and_a_sentence_transformers_folder(finished, tiny_bert_dir):
    from sentence_transformers import SentenceTransformer

    tree, result = finished
    out = tree["output_dir"]
    lines = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    logged = [m for m in lines if "loss" in m]
    assert [m["step"] for m in logged] == list(range(1, STEPS + 1))
    evaluated = {m["step"]: m["eval/sts/spearman_cosine"] for m in lines if "loss" not in m}
    assert sorted(evaluated) == [0, 3, 6] and all(-1 <= v <= 1 for v in evaluated.values())
    best = json.load(open(os.path.join(out, "best.json")))
    assert best["step"] == max((3, 6), key=evaluated.get) and best["value"] == evaluated[best["step"]]
    assert os.path.exists(os.path.join(out, "best", "model.safetensors"))
    assert [m["loss"] for m in logged] == result.losses and all(np.isfinite(result.losses))
    assert logged[0]["lr"] == 0.0 and logged[2]["lr"] == pytest.approx(1e-3)  # warmup, then the peak
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["4", "6"]  # checkpoint.keep = 2
    assert any(name.startswith("events") for name in os.listdir(os.path.join(out, "tensorboard")))
    assert json.load(open(os.path.join(out, "train_config.json")))["optim.lr"] == 1e-3

    texts = ["search_query: что нового про кошки?", "search_document: chess: новость", ""]
    ours = Encoder.from_pretrained(result.model_dir).encode(texts, prompt="")
    theirs = SentenceTransformer(result.model_dir, device="cpu").encode(texts, prompt="")
    assert np.abs(ours - theirs).max() <= 1e-5
    before = Encoder.from_pretrained(tiny_bert_dir).encode(texts, prompt="")
    assert np.abs(ours - before).max() > 1e-3  # the weights moved
    # --export STEP: a kept checkpoint as a folder; the last step's is the model itself
    exported = export_checkpoint(TrainConfig.from_dict(tree), STEPS)
    assert exported == os.path.join(out, f"model-{STEPS}")
    assert open(os.path.join(exported, "model.safetensors"), "rb").read() == open(
        os.path.join(result.model_dir, "model.safetensors"), "rb").read()
    with pytest.raises(TrainError, match="no checkpoint of step 2; there are 4, 6"):
        export_checkpoint(TrainConfig.from_dict(tree), 2)


def test_kill_9_then_resume_gives_the_same_bytes(finished, tmp_path):
    tree, result = finished
    out = tmp_path / "out"
    config = toml_file(tmp_path / "run.toml", without_eval(tree, out))
    env = cli_env(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla"),
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    proc = start_berta_jax("train", config, "--quiet", env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    assert wait_for(lambda: (out / "checkpoints" / "2").is_dir(), proc, timeout=300)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists()
    berta_jax("train", config, "--resume", "--quiet", env=env)
    reference = os.path.join(tree["output_dir"], "model", "model.safetensors")
    assert open(out / "model" / "model.safetensors", "rb").read() == open(reference, "rb").read()
    logged = [json.loads(line)["loss"] for line in open(out / "metrics.jsonl")]
    assert logged == result.losses  # every step once, though some ran twice


@pytest.mark.parametrize("fsdp", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_four_devices_give_one_devices_losses(finished, tmp_path, fsdp):
    tree, result = finished
    sharding = {"fsdp": fsdp}  # fsdp: parameters and optimizer state split over the 4 devices too
    config = toml_file(tmp_path / "run.toml", {**without_eval(tree, tmp_path / "out"), "sharding": sharding})
    env = cli_env(XLA_FLAGS="--xla_force_host_platform_device_count=4")
    berta_jax("train", config, "--quiet", env=env)
    logged = [json.loads(line)["loss"] for line in open(tmp_path / "out" / "metrics.jsonl")]
    assert np.abs(np.array(logged) - np.array(result.losses)).max() <= 1e-5


def test_the_cached_loss_equals_the_plain_one(tiny_bert_dir):
    cfg = TrainConfig.from_dict({"model": str(tiny_bert_dir), "output_dir": "unused", "steps": 1})
    student = setup.load_student(cfg, jnp.float32)
    graphdef, params = nnx.split(student.model)
    params = nnx.to_pure_dict(params)
    texts = [[f"вопрос {i} про {t}" for i, t in enumerate(TOPICS[:8])],
             [f"{t} ответ номер {i}" for i, t in enumerate(TOPICS[:8])]]
    from berta_jax.train.batches import Batcher

    host = Batcher(student.tokenizer, (32,), 0, exclude_prompt=False)(texts, ["", ""], None).arrays()
    batch = {k: jnp.asarray(v) for k, v in host.items()}
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))

    def value_and_grads(loss_name, chunk):
        loss = setup.build_loss(TrainConfig.from_dict(
            {"model": "m", "output_dir": "o", "steps": 1, "loss": {"name": loss_name}}))
        spec = StepSpec(graphdef, loss, "mean", True, False, mesh, True, chunk)
        return jax.jit(jax.value_and_grad(lambda t: batch_loss(spec, t, batch, None)))(
            {"params": params, "aux": {}})

    plain, plain_grads = value_and_grads("mnrl", None)
    cached, cached_grads = value_and_grads("cached_mnrl", 2)
    assert abs(float(plain) - float(cached)) <= 1e-6
    for a, b in zip(jax.tree.leaves(plain_grads), jax.tree.leaves(cached_grads)):
        assert np.linalg.norm(a - b) <= 1e-5 * max(np.linalg.norm(a), 1e-6)


def test_refusals_name_what_is_at_fault(tiny_bert_dir, pairs, tmp_path):
    out = tmp_path / "out"
    holder = LocalLock(str(out / ".lock"), "another-run")
    holder.acquire()
    try:
        with pytest.raises(JobError, match="lock"):
            train(TrainConfig.from_dict(settings(tiny_bert_dir, pairs, out)), progress=False)
    finally:
        holder.release()
    cases = [
        ({"loss__name": "mnlr"}, ConfigError, "unknown loss 'mnlr'; did you mean 'mnrl'"),
        ({"loss__name": "mse"}, ConfigError, "needs labels: dataset 'train'"),
        ({"data__batch_size": 64}, ConfigError, "data.batch_size=64 leaves no full batch"),
        ({"prompts": {"query": "search_query"}}, ConfigError, "prompts.query: no such column"),
        ({"data__columns": ["anchor", "negative"]}, Exception, "no column 'negative'"),
    ]
    for i, (extra, error, message) in enumerate(cases):
        with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
            train(TrainConfig.from_dict(settings(tiny_bert_dir, pairs, tmp_path / f"o{i}", **extra)),
                  progress=False, log=lambda m: None)
        # a start that failed stores no settings: the corrected command runs as a new run
        assert not (tmp_path / f"o{i}" / "train_config.json").exists()


def test_resume_refuses_changed_settings_and_a_second_start(finished):
    tree, _ = finished
    with pytest.raises(TrainError, match=r"optim.lr: 0.001 -> 0.01"):
        train(TrainConfig.from_dict(tree, ["optim.lr=0.01"]), resume=True, progress=False)
    with pytest.raises(TrainError, match="holds a run already; pass --resume"):
        train(TrainConfig.from_dict(tree), progress=False)


def test_a_nan_loss_stops_the_run_naming_the_step(tiny_bert_dir, pairs, tmp_path, monkeypatch):
    from berta_jax.train import trainer

    def nan_after_two(spec, tx, rate):  # the loop's check, without compiling a real step
        def step(state, batch, key):
            loss = jnp.where(state["step"] >= 2, jnp.nan, 1.0)
            return {**state, "step": state["step"] + 1}, {"loss": loss, "grad_norm": 0.0, "lr": 0.0}
        return step

    monkeypatch.setattr(trainer, "make_step", nan_after_two)
    out = tmp_path / "out"
    tree = settings(tiny_bert_dir, pairs, out, checkpoint__every=1)
    with pytest.raises(TrainError, match=r"step 3: the loss is nan; stopped. The last good checkpoint is step 2"):
        train(TrainConfig.from_dict(tree), progress=False, log=lambda m: None)
    assert not (out / "model").exists()
    assert [json.loads(line)["step"] for line in open(out / "metrics.jsonl")] == [1, 2]


@pytest.mark.slow
def test_two_processes_give_one_processes_losses(finished, tmp_path):
    from tests.emulators import free_port

    tree, result = finished
    out = tmp_path / "out"
    config = toml_file(tmp_path / "run.toml", without_eval(tree, out))
    port = free_port()
    procs = [start_berta_jax("train", config, "--quiet", "--coordinator", f"127.0.0.1:{port}",
                             "--num-processes", "2", "--process-id", str(i),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    logged = [json.loads(line)["loss"] for line in open(out / "metrics.jsonl")]
    assert np.abs(np.array(logged) - np.array(result.losses)).max() <= 1e-5


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_resume_finishes(finished, tmp_path):
    tree, result = finished
    out = tmp_path / "out"
    config = toml_file(tmp_path / "run.toml", {**without_eval(tree, out), "checkpoint": {"every": 100, "keep": 2}})
    proc = start_berta_jax("train", config, "--quiet", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert wait_for(lambda: (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 2,
                    proc, timeout=600)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err.decode()[-2000:]
    saved = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] >= 2 and f"stopped at step {saved[-1]}" in err.decode()
    berta_jax("train", config, "--resume", "--quiet")
    logged = [json.loads(line)["loss"] for line in open(out / "metrics.jsonl")]
    assert np.abs(np.array(logged) - np.array(result.losses)).max() <= 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("case", ["bf16_remat", "teacher_model", "projection", "datasets_accumulate"])
def test_other_paths_train_and_export(case, tiny_bert_dir, pairs, tmp_path):
    mono = tmp_path / "mono.jsonl"
    rng = np.random.default_rng(0)
    mono.write_text("\n".join(json.dumps({"text": f"строка {i} про {t}", "other": f"{t} line {i}",
                                           "label": rng.normal(size=24).tolist()})
                              for i, t in enumerate(TOPICS * 3)) + "\n")
    extra = {
        "bf16_remat": {"dtype": "bfloat16", "remat": True},
        "teacher_model": {"data": {"columns": ["text"]}, "teacher": {"model": str(tiny_bert_dir)},
                          "loss": {"name": "mse"}},
        "projection": {"data": {"columns": ["text", "label"]}, "loss": {"name": "embed_distill"}},
        "datasets_accumulate": {"data": {"datasets": {"pairs": {"train": str(pairs)},
                                                      "mono": {"train": str(mono), "columns": ["text", "other"]}},
                                         "sampler": "round_robin"},
                                "optim": {"accumulate": 2}},
    }[case]
    tree = settings(tiny_bert_dir, pairs, tmp_path / "out", steps=3)
    if case != "bf16_remat":
        tree["prompts"] = {}
        tree["data"] = {"batch_size": 8} if case == "datasets_accumulate" else {"train": [str(mono)], "batch_size": 8}
    for key, value in extra.items():
        tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
    result = train(TrainConfig.from_dict(tree), progress=False, log=lambda m: None)
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    assert np.isfinite(Encoder.from_pretrained(result.model_dir).encode(["проверка"])).all()
    if case == "projection":  # the student's 16 dimensions -> the teacher's 24, saved beside the model
        from safetensors.numpy import load_file

        projection = load_file(result.model_dir + ".projection.safetensors")
        assert projection["projection.kernel"].shape == (16, 24)


@pytest.mark.slow
def test_resume_on_another_device_count(finished, tmp_path):
    """Checkpoints of one device restored onto four (the restore target carries the new shardings)."""
    tree, result = finished
    out = tmp_path / "out"
    config = toml_file(tmp_path / "run.toml", without_eval(tree, out))
    proc = start_berta_jax("train", config, "--quiet", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert wait_for(lambda: (out / "checkpoints" / "2").is_dir(), proc, timeout=600)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    berta_jax("train", config, "--resume", "--quiet", env=cli_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    logged = [json.loads(line)["loss"] for line in open(out / "metrics.jsonl")]
    assert len(logged) == STEPS and np.abs(np.array(logged) - np.array(result.losses)).max() <= 1e-5
