"""A run's folder: what is in it, who holds it, and whether a resume may continue it.

    OUTPUT_DIR/train_config.json   the resolved settings (written when the run starts)
    OUTPUT_DIR/checkpoints/STEP/   orbax checkpoints (the last `checkpoint.keep`)
    OUTPUT_DIR/metrics.jsonl       one line per logged step: step, loss, lr, grad_norm, rates
    OUTPUT_DIR/tensorboard/        the same as TensorBoard event files
    OUTPUT_DIR/teacher/            the teacher's embeddings, computed once
    OUTPUT_DIR/model/              the sentence-transformers folder, at the end

One run holds the folder at a time (a lock file, `flock`: released by the kernel when a run dies,
so a `kill -9` never leaves it stuck). A resume continues only a run of the same settings: a key
that would change the numbers is refused, naming it with both values.
"""

from __future__ import annotations

import json
import os
import uuid

from berta_jax.errors import TrainError
from berta_jax.job.lock import LocalLock
from berta_jax.storage.local import LocalStore
from berta_jax.train.config import TrainConfig

CONFIG = "train_config.json"


class RunFolder:
    def __init__(self, path: str):
        if "://" in path:
            raise TrainError(
                f"output_dir={path!r}: a run folder is a local (or mounted) path; copy the "
                "finished model to object storage afterwards"
            )
        self.path = os.path.abspath(path)
        self.lock = LocalLock(os.path.join(self.path, ".lock"), uuid.uuid4().hex)

    def file(self, *names: str) -> str:
        return os.path.join(self.path, *names)

    def open(self, cfg: TrainConfig, resume: bool) -> bool:
        """Take the folder for `cfg`; True when there is a run to continue."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise TrainError(f"output_dir={self.path}: is a file, not a folder")
        self.lock.acquire()  # a second run on the folder stops here, naming the holder
        stored_path = self.file(CONFIG)
        if not os.path.exists(stored_path):
            return False  # the settings are stored when the first step starts (`commit`)
        if not resume:
            self.lock.release()
            raise TrainError(
                f"{stored_path}: output_dir holds a run already; pass --resume to continue it, "
                "or choose another output_dir"
            )
        with open(stored_path) as f:
            stored = json.load(f)
        changed = cfg.changed_keys(stored)
        if changed:
            self.lock.release()
            diffs = "; ".join(f"{k}: {stored.get(k)!r} -> {cfg.values.get(k)!r}" for k in changed)
            raise TrainError(
                f"{stored_path}: --resume with changed settings ({diffs}); a resumed run must "
                "compute what the first would have. Restore them, or start another output_dir"
            )
        return True

    def commit(self, cfg: TrainConfig) -> None:
        """Store the settings the run goes on with (a start that failed before its first step
        leaves none, so the same command runs again as a new run)."""
        LocalStore().write(self.file(CONFIG), cfg.to_json().encode())

    def close(self) -> None:
        self.lock.release()
