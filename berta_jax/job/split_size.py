"""How many bytes of text make a split when the command does not say (`--split-size`).

A split is the unit of a stop and of a resume: what a Ctrl-C or a kill can lose. So its default
is set by time, not by bytes: about a minute of work on the device that runs it, from the model's
FLOPs per token and a deliberately low estimate of the device's speed (a slower machine than
assumed makes a split longer than a minute, a faster one shorter). On a CPU that is 16 KiB of text
for a BERT-base model (BERTA) and 128 KiB for all-MiniLM-L6-v2; on an accelerator the 4 MiB
ceiling (seconds of work).

The split plan is part of a job's fingerprint: a resume, or the same command again, takes the size
the earlier run recorded, never a recomputed one (another machine, or another estimate, would plan
other splits and refuse the parts already there).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os

from berta_jax.job.layout import Layout
from berta_jax.storage.stores import store_for

SECONDS_PER_SPLIT = 60
# a low estimate of sustained float32 FLOP/s per platform: a 2-core x86 CPU does about 100 GFLOP/s
# alone and a tenth of that shared with other jobs (MiniLM at 474 tokens/s under a load of 10)
ASSUMED_FLOPS = {"cpu": 20e9, "gpu": 50e12, "cuda": 50e12, "rocm": 50e12, "tpu": 50e12}
BYTES_PER_TOKEN = 4  # English; Cyrillic UTF-8 has more bytes per token, so a split takes less time
AVERAGE_CONTEXT = 128  # tokens a text attends over, for attention's share of the FLOPs
MIN_SPLIT_BYTES, MAX_SPLIT_BYTES = 16 * 2**10, 4 * 2**20
MAX_RECORD_BYTES = 256 * 2**20
CUDA_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin")


def flops_per_token(config) -> float:
    """The forward's FLOPs per token: the layers' matmuls and attention over an average context."""
    h, layers, ffn = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    return 2 * layers * (4 * h * h + 2 * h * ffn) + 4 * layers * h * AVERAGE_CONTEXT


def default_split_bytes(platform: str, config) -> int:
    """About SECONDS_PER_SPLIT of work on `platform` (JAX's backend name) with the model of
    `config`: a power of two between 16 KiB and 4 MiB."""
    flops = ASSUMED_FLOPS.get(platform, ASSUMED_FLOPS["cpu"])
    target = SECONDS_PER_SPLIT * flops / flops_per_token(config) * BYTES_PER_TOKEN
    size = MIN_SPLIT_BYTES
    while size * 2 <= min(target, MAX_SPLIT_BYTES):
        size *= 2
    return size


def device_kind() -> str:
    """The kind of device JAX will compute on, judged without starting JAX (a refused or finished
    job must not pay for that): `JAX_PLATFORMS` if set, else a GPU or TPU when both its device file
    and JAX's plugin for it are there, else "cpu"."""
    chosen = os.environ.get("JAX_PLATFORMS", "").split(",")[0].strip().lower()
    if chosen:
        return chosen
    if glob.glob("/dev/nvidia[0-9]*") and any(_installed(m) for m in CUDA_PLUGINS):
        return "gpu"
    if (glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*")) and _installed("libtpu"):
        return "tpu"
    return "cpu"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def recorded_split_bytes(layout: Layout) -> int | None:
    """The split size an earlier run of this output recorded (its work record, else its completion
    record), or None: no record, or one that does not say (settling reports a damaged record)."""
    store = store_for(layout.output)
    for path in (store.join(layout.state, "job.json"), layout.manifest):
        try:  # a regular file of a record's size only (never a FIFO, which would block the read)
            info = store.info(path)
            if info.kind != "file" or not 0 < info.size <= MAX_RECORD_BYTES:
                continue
            record = json.loads(store.read(path))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            continue
        try:
            size = record["fingerprint"]["options"]["split_bytes"]
        except (KeyError, TypeError):
            continue
        if isinstance(size, int) and not isinstance(size, bool) and size >= 1:
            return size
    return None


def format_size(size: int) -> str:
    """4194304 -> 4M, 65536 -> 64K, 1000 -> 1000 (as `--split-size` takes it)."""
    for unit, scale in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)
