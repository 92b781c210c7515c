"""berta-jax vs sentence-transformers (PyTorch) on the same machine, in one run.

  python benchmarks/throughput.py                     # mixed workload, float32, CPU or GPU
  python benchmarks/throughput.py --dtype bfloat16    # the fast mode (bf16 compute on both sides)
  python benchmarks/throughput.py --mode dense        # 32 x 128 forward vs the machine's matmul rate

mixed: a deterministic 256-text Russian/English workload (benchmarks/workload.py) through
`Encoder.encode` and `SentenceTransformer.encode` (batch 32), each in its own process with the same
thread count, after a warm-up; prints texts/s, real tokens/s, padded-token overhead, compile seconds,
compiled shapes, peak memory, the ratio, and the max abs difference of the two sets of embeddings.
dense: the encoder forward on a fixed [32, 128] batch (berta-jax and transformers BertModel), its FLOP
rate, and that rate as a fraction of the best of a large numpy, torch and jax.numpy matmul, every timing
taken in interleaved rounds (see `_interleaved_best`), each matmul sample as long as one forward.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.workload import berta_shaped_checkpoint, mixed_texts  # noqa: E402


def encoder_flops(cfg: dict, batch: int, length: int) -> float:
    """Matmul FLOPs of one encoder forward: projections, feed-forward, attention scores and context."""
    h, i, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    tokens = batch * length
    per_layer = 2 * tokens * (4 * h * h + 2 * h * i) + 2 * 2 * batch * length * length * h
    return float(n * per_layer)


def attention_share(cfg, shapes) -> float:
    """Attention's share (scores and context) of the forward's matmul FLOPs over batches of `shapes` [(rows, length)]:
    with packing a row's attention spans its whole length, so long rows pay for it."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    attn = sum(4 * r * n * n * h for r, n in shapes)
    dense = sum(2 * r * n * (4 * h * h + 2 * h * i) for r, n in shapes)
    return attn / (attn + dense)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _device_peak_mb(engine: str) -> float | None:
    if engine == "jax":
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use", 0) / 2**20 or None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


# --- one engine, in its own process -------------------------------------------------------------------


def run_engine(engine: str, model: str, dtype: str, n_texts: int, out: Path, repeats: int) -> dict:
    texts = mixed_texts(n_texts)
    if engine == "jax":
        import jax.numpy as jnp

        from berta_jax import Encoder

        encoder = Encoder.from_pretrained(model, dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
        import jax

        device = str(jax.local_devices()[0].device_kind)
        first = time.perf_counter()
        result = encoder.encode_detailed(texts)  # warm-up: compiles each shape (or loads it from the cache)
        first = time.perf_counter() - first
        times, busy_before = [], encoder.run_stats.device_seconds
        for _ in range(repeats):
            start = time.perf_counter()
            result = encoder.encode_detailed(texts)
            times.append(time.perf_counter() - start)
        busy = (encoder.run_stats.device_seconds - busy_before) / sum(times)  # of the whole call, tokenizing included
        embeddings = result.embeddings
        batches = encoder.prepare(texts, prompt=encoder.sentence.resolve_prompt(None, None)).batches
        extra = dict(
            attention=encoder.compile_stats.attention,
            attention_share=attention_share(encoder.config, [b.input_ids.shape for b in batches]),
            compile_s=encoder.compile_stats.wall_seconds,  # waited for (programs compiled side by side count once)
            shapes=encoder.compile_stats.count,
            cache_hits=encoder.compile_stats.cache_hits,
            first_call_s=first,
            padded_tokens=int(result.padded_tokens),
            real_tokens=int(result.num_tokens.sum()),
            max_batch_tokens=encoder.max_batch_tokens,
            device_busy=busy,
        )
    else:
        import torch
        from sentence_transformers import SentenceTransformer

        cuda = torch.cuda.is_available()
        kwargs = {"model_kwargs": {"dtype": torch.bfloat16}} if dtype == "bfloat16" else {}
        st = SentenceTransformer(model, device="cuda" if cuda else "cpu", **kwargs)
        device = torch.cuda.get_device_name() if cuda else "cpu"
        st.encode(texts[:32], batch_size=32)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            embeddings = st.encode(texts, batch_size=32, convert_to_numpy=True)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        tokenized = st.tokenize(texts)
        lengths = tokenized["attention_mask"].sum(1).numpy()
        order = np.argsort([-len(t) for t in texts], kind="stable")  # sentence-transformers' own batching
        padded = sum(int(lengths[order[i : i + 32]].max()) * len(order[i : i + 32]) for i in range(0, len(texts), 32))
        extra = dict(compile_s=0.0, shapes=None, padded_tokens=padded, real_tokens=int(lengths.sum()),
                     threads=torch.get_num_threads())
    np.save(out, np.asarray(embeddings, dtype=np.float32))
    return dict(engine=engine, device=device, seconds=min(times), texts=len(texts),
                peak_rss_mb=_peak_rss_mb(), device_peak_mb=_device_peak_mb(engine), **extra)


def _spawn(engine: str, args, out: Path, dtype: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--engine", engine, "--model", args.model, "--dtype", dtype or args.dtype,
           "--texts", str(args.texts), "--repeats", str(args.repeats), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{engine} run failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_flags() -> str:
    """The CPU model and its AVX-512 / AMX flags: a CPU speed figure means something only beside them."""
    import platform
    import re

    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = sorted(set(re.findall(r"\b(avx512[a-z_0-9]*|amx[a-z_0-9]*)\b", info)))
    return f"{model}, {os.cpu_count()} cores, flags: {' '.join(flags) or 'no AVX-512 / AMX'}"


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def mixed(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        jx = _spawn("jax", args, Path(tmp) / "jax.npy")
        pt = _spawn("torch", args, Path(tmp) / "torch.npy")
        diff = float(np.abs(np.load(Path(tmp) / "jax.npy") - np.load(Path(tmp) / "torch.npy")).max())
        if args.dtype == "bfloat16":  # the float32 reference: its speed and its embeddings
            ref = _spawn("torch", args, Path(tmp) / "ref.npy", dtype="float32")
            cosine = _min_cosine(np.load(Path(tmp) / "jax.npy"), np.load(Path(tmp) / "ref.npy"))
            st_cosine = _min_cosine(np.load(Path(tmp) / "torch.npy"), np.load(Path(tmp) / "ref.npy"))
    print(f"machine: {cpu_flags()}")
    print(f"mixed workload: {jx['texts']} texts, {jx['real_tokens']} real tokens, dtype {args.dtype}, "
          f"device {jx['device']} / {pt['device']}, threads {pt['threads']}")
    print(f"{'engine':<22}{'texts/s':>9}{'real tok/s':>12}{'padded/real':>13}{'compile s':>11}{'shapes':>8}"
          f"{'peak RSS MB':>13}{'device MB':>11}")
    for name, r in (("berta-jax", jx), ("sentence-transformers", pt)):
        dev = f"{r['device_peak_mb']:.0f}" if r["device_peak_mb"] else "-"
        print(f"{name:<22}{r['texts'] / r['seconds']:>9.1f}{r['real_tokens'] / r['seconds']:>12.0f}"
              f"{r['padded_tokens'] / r['real_tokens']:>13.3f}{r['compile_s']:>11.1f}{str(r['shapes'] or '-'):>8}"
              f"{r['peak_rss_mb']:>13.0f}{dev:>11}")
    print(f"ratio berta-jax / sentence-transformers (real tokens/s): {pt['seconds'] / jx['seconds']:.2f}x; "
          f"max abs diff of embeddings: {diff:.2e}; berta-jax first call {jx['first_call_s']:.1f}s "
          f"({jx['cache_hits']} of {jx['shapes']} programs from the persistent cache), "
          f"max_batch_tokens {jx['max_batch_tokens']}; attention kernel {jx['attention']}, "
          f"{100 * jx['attention_share']:.1f}% of the forward's matmul FLOPs; device busy "
          f"{100 * jx['device_busy']:.0f}% of berta-jax's encode time")
    if args.dtype == "bfloat16":
        print(f"sentence-transformers float32: {ref['real_tokens'] / ref['seconds']:.0f} real tok/s; berta-jax bfloat16 "
              f"is {ref['seconds'] / jx['seconds']:.2f}x sentence-transformers float32 and "
              f"{pt['seconds'] / jx['seconds']:.2f}x sentence-transformers bfloat16; min cosine to the float32 "
              f"reference: berta-jax bfloat16 {cosine:.5f}, sentence-transformers bfloat16 {st_cosine:.5f}")


# --- dense fixed shape ----------------------------------------------------------------------------------


def _interleaved_best(fns: dict, rounds: int) -> dict[str, float]:
    """The best time of each function over `rounds` rounds that run every function once in turn, after one
    warm-up call each: on a shared machine whose speed drifts within minutes, each ratio then compares
    timings taken at the same moments, not one function's quiet minute with another's busy one."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def dense(args) -> None:
    import jax
    import jax.numpy as jnp
    import torch
    from transformers import BertModel

    from berta_jax import Encoder, make_hidden_fn

    cuda = torch.cuda.is_available()
    tdev = "cuda" if cuda else "cpu"
    bf16 = args.dtype == "bfloat16"
    cfg = json.loads((Path(args.model) / "config.json").read_text())
    batch, length = 32, 128
    ids = np.random.default_rng(0).integers(5, cfg["vocab_size"], size=(batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)

    encoder = Encoder.from_pretrained(args.model, dtype=jnp.bfloat16 if bf16 else jnp.float32)
    # the forward as Encoder.token_embeddings runs it (row chunks of max_batch_tokens on CPU)
    fn = jax.jit(make_hidden_fn(encoder.graphdef, chunk_tokens=encoder.max_batch_tokens))
    jids, jmask = jax.device_put(ids), jax.device_put(mask)
    model = BertModel.from_pretrained(args.model, dtype=torch.bfloat16 if bf16 else torch.float32).to(tdev).eval()
    tids, tmask = torch.from_numpy(ids).long().to(tdev), torch.from_numpy(mask).long().to(tdev)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def torch_forward():
        with torch.no_grad():
            model(input_ids=tids, attention_mask=tmask)
        sync()

    n = 8192 if cuda else 2048
    a = np.random.default_rng(1).random((n, n), dtype=np.float32)
    ta = torch.from_numpy(a).to(tdev).to(torch.bfloat16 if bf16 else torch.float32)
    ja = jnp.asarray(a, dtype=jnp.bfloat16 if bf16 else jnp.float32)
    mm = jax.jit(lambda x: jnp.matmul(x, x, precision=None if bf16 else "highest"))
    forward = lambda: fn(encoder.params, jids, jmask).block_until_ready()  # noqa: E731
    jax_product = lambda: mm(ja).block_until_ready()  # noqa: E731
    # each matmul sample is a run of back-to-back products as long as one forward, so that a best-of over
    # short samples does not catch a quiet moment that a whole forward cannot
    reps = max(1, round(_interleaved_best({"f": forward}, 1)["f"] / _interleaved_best({"m": jax_product}, 3)["m"]))

    def repeated(product):
        return lambda: [product() for _ in range(reps)]

    fns = {"berta-jax": forward,
           "transformers BertModel": torch_forward,
           **({} if cuda else {"numpy": repeated(lambda: a @ a)}),
           "torch": repeated(lambda: (ta @ ta, sync())),
           "jax": repeated(jax_product)}
    times = _interleaved_best(fns, args.repeats + 1)
    rates = {k: reps * 2 * n**3 / times[k] for k in ("numpy", "torch", "jax") if k in times}
    best_name = max(rates, key=rates.get)
    flops = encoder_flops(cfg, batch, length)
    device = str(jax.local_devices()[0].device_kind)
    print(f"dense [{batch}, {length}] forward, dtype {args.dtype}, device {device}; {flops / 1e9:.1f} GFLOP per forward; "
          f"best of {args.repeats + 1} interleaved rounds")
    print(f"matmul rate {n}^3, {reps} back to back per sample (" + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in rates.items())
          + f" GFLOP/s; best: {best_name})")
    for name in ("berta-jax", "transformers BertModel"):
        rate = flops / times[name]
        print(f"{name:<24} {batch * length / times[name]:>9.0f} tokens/s {rate / 1e9:>8.0f} GFLOP/s "
              f"{100 * rate / rates[best_name]:>6.1f}% of the best matmul rate, "
              f"{100 * rate / rates['jax']:.1f}% of jax.numpy's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("mixed", "dense"), default="mixed")
    parser.add_argument("--model", help="model folder (default: a BERTA-shaped random checkpoint, built once)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--engine", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is None:
        cache = Path(os.environ.get("BERTA_JAX_BENCH_DIR", Path.home() / ".cache" / "berta_jax" / "bench"))
        args.model = str(berta_shaped_checkpoint(cache / "berta-shaped-seed0"))
    if args.engine:
        print(json.dumps(run_engine(args.engine, args.model, args.dtype, args.texts, Path(args.out), args.repeats)))
    elif args.mode == "mixed":
        mixed(args)
    else:
        dense(args)


if __name__ == "__main__":
    main()
