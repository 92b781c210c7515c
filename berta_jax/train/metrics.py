"""Where a run's numbers go: `metrics.jsonl` (one JSON object per logged step) and TensorBoard
event files (tensorboardX's writer).

A resumed run first drops the lines of steps after its checkpoint (it computes them again, to the
same values), so the file holds each step once.
"""

from __future__ import annotations

import json
import os

from tensorboardX import SummaryWriter

from berta_jax.storage.local import LocalStore


class MetricsLog:
    def __init__(self, path: str, tensorboard: str | None, after_step: int):
        self.path = path
        self._keep_through(after_step)
        self.file = open(path, "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            self.writer = SummaryWriter(tensorboard)

    def _keep_through(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            LocalStore().write(self.path, "".join(kept).encode())

    def write(self, step: int, values: dict) -> None:
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()
