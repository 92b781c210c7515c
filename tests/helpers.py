"""Helpers the tests share: the PyTorch references, the command line in a subprocess, polling, file hashes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKERS = Path(__file__).resolve().parent / "workers"


def sentence_transformer(folder: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu")


def torch_bert(folder: Path):
    from transformers import BertModel

    return BertModel.from_pretrained(str(folder), attn_implementation="eager").eval()


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a berta-jax subprocess: CPU, quiet third-party progress bars."""
    return dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_DISABLE_PROGRESS_BARS="1", **extra)


def berta_jax(*args: str, check: bool = True, timeout: float = 300, env: dict | None = None,
              input: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m berta_jax ARGS` and return what it did (asserting exit 0 when `check`)."""
    done = subprocess.run([sys.executable, "-m", "berta_jax", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env or cli_env(), input=input)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def start_berta_jax(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "berta_jax", *args], cwd=REPO, env=env or cli_env(), **popen)


def committed_parts(work_folder: Path) -> int:
    """Committed part records in a job's work folder (`NNNNN.json`, one per split)."""
    return len([p for p in work_folder.glob("*.json") if p.stem.isdigit()]) if work_folder.is_dir() else 0


def wait_for(condition, proc: subprocess.Popen | None = None, timeout: float = 120) -> bool:
    """Poll `condition()` until true, the process ends, or the timeout passes."""
    deadline = time.time() + timeout
    while time.time() < deadline and (proc is None or proc.poll() is None):
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def tree_hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots`: compared before and after to prove nothing else changed."""
    hashes = {}
    for root in roots:
        for path in sorted([root] if root.is_file() else root.rglob("*")):
            if path.is_file():
                hashes[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def worker(name: str, *args: str, env: dict | None = None, timeout: float = 600) -> dict:
    """Run tests/workers/NAME.py ARGS; its last stdout line is a JSON result."""
    done = subprocess.run([sys.executable, str(WORKERS / f"{name}.py"), *args], capture_output=True, text=True,
                          env=env or cli_env(), timeout=timeout, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
