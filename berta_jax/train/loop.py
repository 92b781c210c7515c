"""The steps of a run: place each prepared batch on the mesh, step, check, log, evaluate, save.

A NaN or inf loss stops the run naming the step and the last good checkpoint (no checkpoint of a
poisoned state is written). A stop asked for (Ctrl-C, SIGTERM; several processes agree on the step
through JAX's preemption sync point) saves the state at the step it ends and returns. At the end
the last state is saved and exported as a sentence-transformers folder.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from berta_jax.errors import TrainError
from berta_jax.train.checkpoint import Checkpoints
from berta_jax.train.evaluation import TrainEval, host_params
from berta_jax.train.export import export_model
from berta_jax.train.metrics import MetricsLog
from berta_jax.train.pipeline import StepSource, step_iterator
from berta_jax.train.progress import TrainProgress
from berta_jax.train.step import batch_sharding


def stop_now(step: int, stop: Callable[[], bool]) -> bool:
    """Whether to stop after `step`: every process answers alike."""
    if jax.process_count() > 1:
        return multihost_utils.reached_preemption_sync_point(step)
    return bool(stop())


def gathered(tree):
    """Host copies of (possibly sharded, multi-process) arrays: every process takes part."""
    if jax.process_count() > 1:
        tree = multihost_utils.process_allgather(tree, tiled=True)
    return host_params(tree)


@dataclasses.dataclass
class StepLoop:
    cfg: dict
    mesh: Mesh
    source: StepSource
    checkpoints: Checkpoints
    metrics: MetricsLog | None  # None on processes other than the first
    bar: TrainProgress
    evaluation: TrainEval
    record: Callable[[int], dict]
    export: Callable[[dict, str], str]  # (trained {"params", "aux"}, folder) -> folder
    graphdef: object
    log: Callable[[str], None]

    def run(self, state, step_fn, start: int, stop) -> tuple[list[float], int | None]:
        cfg, last, losses = self.cfg, self.cfg["steps"], []
        base_key = jax.random.key(cfg["seed"])
        if start == 0:
            self._evaluate(state, 0)
        getattr(stop, "arm", lambda: None)()  # from now on a signal stops at a step's end
        for step, host in zip(range(start, last), step_iterator(self.source, start)):
            state, out = step_fn(state, self._place(host), jax.random.fold_in(base_key, step))
            values = {k: float(v) for k, v in out.items()}
            self._check(step + 1, values)
            losses.append(values["loss"])
            rates = self.bar.update(step + 1, values, int(host["real_tokens"]))
            if self.metrics is not None and (step + 1) % cfg["log.every"] == 0:
                self.metrics.write(step + 1, {**values, **rates})
            if self.evaluation.due(step + 1, last):
                self._evaluate(state, step + 1)
            stopping = step + 1 < last and stop_now(step + 1, stop)
            force = step + 1 == last or stopping
            self.checkpoints.save(step + 1, state, self.record(step + 1), force=force)
            if stopping:
                self.checkpoints.wait()
                return losses, step + 1
        self.checkpoints.wait()
        self.log(self.export(gathered(_trained(state)), "model"))
        self.log(f"trained {last - start} steps: {self.bar.summary()}")
        return losses, None

    def _check(self, step: int, values: dict) -> None:
        if not math.isfinite(values["loss"]):
            raise TrainError(
                f"step {step}: the loss is {values['loss']}; stopped. The last good checkpoint is "
                f"step {self.checkpoints.latest()} in {self.checkpoints.folder}; lower optim.lr "
                "or check the data, then --resume"
            )

    def _evaluate(self, state, step: int) -> None:
        if not self.evaluation.evaluators:
            return
        trained = gathered(_trained(state))
        metrics = self.evaluation.run(self.graphdef, trained["params"])
        if self.metrics is not None:
            self.metrics.write(step, metrics)
        shown = ", ".join(f"{k[5:]} {v:.4f}" for k, v in metrics.items())
        self.log(f"step {step}: {shown}")
        if step and self.metrics is not None and self.evaluation.improved(metrics):
            self.log(self.export(trained, "best"))
            self.evaluation.keep_best(metrics, step)

    def _place(self, host: dict) -> dict:
        arrays = {k: v for k, v in host.items() if k != "real_tokens"}
        shardings = batch_sharding(self.mesh, arrays)
        rows = self.cfg["data.batch_size"]

        def global_array(name, local):
            shape = list(local.shape)
            shape[1 if name == "labels" else 2] = rows
            return jax.make_array_from_process_local_data(shardings[name], local, tuple(shape))

        return {name: global_array(name, value) for name, value in arrays.items()}


def _trained(state) -> dict:
    return {"params": state["params"], "aux": state["aux"]}


def write_model(student_folder, config, run_folder, lead: bool) -> Callable[[dict, str], str]:
    """The export of a run: trained weights -> `OUTPUT_DIR/NAME/` (the first process writes)."""

    def export(trained: dict, name: str) -> str:
        if not lead:
            return ""
        aux = trained["aux"] or None
        out = export_model(trained["params"], config, student_folder, run_folder.file(name), aux)
        return f"saved the sentence-transformers folder {out}"

    return export
