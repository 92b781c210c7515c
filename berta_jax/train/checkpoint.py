"""A run's checkpoints, written by orbax: parameters, optimizer state, the step, and the run's
record (data position, seed, the model's identity and the resolved config).

orbax writes each checkpoint into a temporary folder and renames it once complete (every process
saves its shards together), so a kill or a full disk during a save leaves the previous checkpoint
as it was; saves run in the background while training goes on. A restore is made against an
abstract target that carries the shardings wanted now, so a run resumes on another device count.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from berta_jax.errors import TrainError


class Checkpoints:
    """The checkpoints of one run folder."""

    def __init__(self, folder: str | os.PathLike, *, keep: int, every: int):
        self.folder = os.fspath(folder)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=every,
            enable_async_checkpointing=True,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.folder, options=options)

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, record: dict, *, force: bool = False) -> bool:
        """Start saving `state` at `step` (when the interval asks for it, or `force`)."""
        try:
            return self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
                ),
                force=force,
            )
        except OSError as e:
            raise TrainError(
                f"{self.folder}: saving the checkpoint of step {step} failed ({e}); "
                f"the last good one is step {self.latest()}"
            ) from None

    def wait(self) -> None:
        """Until every started save is complete (raises what a background save raised)."""
        try:
            self.manager.wait_until_finished()
        except OSError as e:
            raise TrainError(
                f"{self.folder}: a checkpoint save failed ({e}); the last good one is step "
                f"{self.latest()}"
            ) from None

    def record(self, step: int) -> dict:
        restored = self.manager.restore(
            step, args=ocp.args.Composite(record=ocp.args.JsonRestore())
        )
        return dict(restored["record"])

    def restore(self, step: int, target: Any) -> Any:
        """The state saved at `step`, laid out as `target` (ShapeDtypeStructs with shardings)."""
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target
        )
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
        return restored["state"]

    def restore_saved(self, step: int) -> Any:
        """The state saved at `step` as it was saved (host arrays): for exporting, not training."""
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
        )
        return jax.tree.map(np.asarray, restored["state"])

    def close(self) -> None:
        self.manager.close()
