"""Input bytes each process of a `berta-jax encode` run reads, with 1, 2 and 4 processes, on local disk and on the
Cloud Storage emulator; and the time to plan a 10 GB text corpus (metadata only).

  python benchmarks/job_reads.py                  # an 8 MB text corpus in 512 KiB splits, local and gs://
  python benchmarks/job_reads.py --mb 32 --stores local

The model is a tiny random BERT (the byte counts do not depend on it; it keeps the runs short). Every process
counts the bytes its input reads return (local files at the read call; Cloud Storage at each ranged GET), and
the count is compared with corpus / N + one split. A fresh dataset output each run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORKER = r"""
import atexit, io, json, os, sys
sys.path.insert(0, os.environ["BERTA_REPO"])
corpus, report = os.environ["CORPUS_PREFIX"], os.environ["BYTES_REPORT"]
read = {"bytes": 0}

from berta_jax.storage import stores as storage

class Counting(io.FileIO):
    def readinto(self, b):
        n = super().readinto(b)
        read["bytes"] += n or 0
        return n

local_open = storage.LocalStore.open_read
storage.LocalStore.open_read = lambda self, path, block_size=None: (
    io.BufferedReader(Counting(path)) if path.startswith(corpus) else local_open(self, path))  # as open(path, "rb")
try:
    import gcsfs.core
    fetch = gcsfs.core.GCSFile._fetch_range
    def counted(self, start=None, end=None):
        data = fetch(self, start, end)
        if ("gs://" + self.path).startswith(corpus) or self.path.startswith(corpus.removeprefix("gs://")):
            read["bytes"] += len(data)
        return data
    gcsfs.core.GCSFile._fetch_range = counted
except ImportError:
    pass
atexit.register(lambda: open(report, "w").write(json.dumps(read)))
from berta_jax.cli import main
sys.exit(main(sys.argv[1:]))
"""


def corpus_text(mb: float) -> bytes:
    from benchmarks.workload import mixed_texts

    texts, size, out = mixed_texts(4000), 0, []
    while size < mb * 2**20:
        for t in texts:
            line = (t.replace("\n", " ") + "\n").encode()
            out.append(line)
            size += len(line)
    return b"".join(out)


def run(processes: int, corpus: str, output: str, model: str, split: str, folder: Path, env: dict) -> list[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs, reports = [], []
    for p in range(processes):
        report = folder / f"bytes-{processes}-{p}.json"
        reports.append(report)
        cluster = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes), "--process-id", str(p)] \
            if processes > 1 else []
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, "encode", corpus, "-o", output, "--model", model,
                                       "--split-size", split, "--quiet", *cluster],
                                      env={**env, "BYTES_REPORT": str(report), "CORPUS_PREFIX": corpus},
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        out, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"a process failed:\n{err[-3000:]}")
    return [json.loads(r.read_text())["bytes"] for r in reports]


def planning_time(folder: Path, model: str) -> tuple[float, int]:
    from berta_jax.loading.folder import ModelFolder
    from berta_jax.job.plan import JobOptions, plan_job

    big = folder / "big"
    big.mkdir()
    for i in range(10):  # ten 1 GB text files, sparse: planning reads sizes only
        with open(big / f"shard-{i:02d}.txt", "wb") as f:
            f.truncate(2**30)
    start = time.perf_counter()
    plan = plan_job([str(big)], f"{folder}/plan-out/", JobOptions(), ModelFolder.open(model))
    return time.perf_counter() - start, len(plan.splits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=8.0)
    parser.add_argument("--split-size", default="512K")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--stores", nargs="+", default=["local", "gs"])
    args = parser.parse_args()
    from berta_jax.cli.encode import split_size
    from tests.checkpoints import make_random_bert

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"# {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}")
    folder = Path(tempfile.mkdtemp(prefix="berta-jax-reads-"))
    model = folder / "tiny"
    make_random_bert(model, seed=7, hidden_size=16, num_attention_heads=2, num_hidden_layers=2, intermediate_size=24,
                     max_position_embeddings=32)
    data = corpus_text(args.mb)
    split = split_size(args.split_size)
    env = dict(os.environ, JAX_PLATFORMS="cpu", BERTA_REPO=str(REPO), XLA_FLAGS="--xla_force_host_platform_device_count=1")
    lines = data.count(b"\n")
    print(f"corpus {len(data):,} bytes of text, {lines:,} lines; splits of {split:,} bytes "
          f"({-(-len(data) // split)} splits)")
    print("| store | processes | bytes read per process | corpus / N + one split | read / (corpus / N) |")
    print("|---|---|---|---|---|")
    for store in args.stores:
        if store == "gs":
            from tests.emulators import apply_client_env, gcs_client_env, start_gcs_emulator

            endpoint, _ = start_gcs_emulator()
            env.update(gcs_client_env(endpoint))
            apply_client_env(gcs_client_env(endpoint))
            from berta_jax.storage.stores import store_for

            store_for("gs://reads").fs.mkdir("reads")
            corpus, root = "gs://reads/corpus.txt", "gs://reads"
            store_for(corpus).write(corpus, data)
        else:
            corpus, root = str(folder / "corpus.txt"), str(folder)
            Path(corpus).write_bytes(data)
        for n in args.processes:
            counts = run(n, corpus, f"{root}/out-{n}/", str(model), args.split_size, folder, env)
            bound = len(data) / n + split
            print(f"| {store} | {n} | {', '.join(f'{c:,}' for c in counts)} | {bound:,.0f} | "
                  f"{', '.join(f'{c / (len(data) / n):.2f}' for c in counts)} |", flush=True)
    seconds, splits = planning_time(folder, str(model))
    print(f"planning 10 GB of text (10 files, default 4 MiB splits): {splits:,} splits in {seconds:.2f} s")


if __name__ == "__main__":
    main()
