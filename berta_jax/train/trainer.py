"""`train(config)`: a run from its settings to a sentence-transformers folder.

The run takes its folder (one run at a time), reads the student, the data and the teacher, builds
one mesh over every device of every process, places the state (replicated, or sharded with
`sharding.fsdp`), restores the latest checkpoint on `resume`, then steps: grain prepares the next
steps on the host while the devices compute the current one. Every step's loss is checked: a
NaN or inf stops the run naming the step and the last good checkpoint. At the end the last state
is saved and exported to `OUTPUT_DIR/model/`.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from berta_jax.errors import ConfigError, TrainError
from berta_jax.loading.folder import ModelFolder
from berta_jax.train import setup
from berta_jax.train.batches import Batcher, bucket_ladder
from berta_jax.train.checkpoint import Checkpoints
from berta_jax.train.config import TrainConfig
from berta_jax.train.export import export_model
from berta_jax.train.metrics import MetricsLog
from berta_jax.train.optim import learning_rate, make_optimizer
from berta_jax.train.pipeline import Shard, StepSource, step_iterator
from berta_jax.train.plan import BatchPlan
from berta_jax.train.progress import TrainProgress
from berta_jax.train.run_folder import RunFolder
from berta_jax.train.step import DATA, StepSpec, batch_sharding, make_step, state_sharding


@dataclasses.dataclass(frozen=True)
class TrainResult:
    model_dir: str  # the sentence-transformers folder
    steps: int
    losses: list[float]  # this call's steps' losses, in order
    seconds: float
    stopped_at: int | None = None  # a stop asked for: the step whose checkpoint was saved


def train(
    cfg: TrainConfig, *, resume: bool = False, log=print, progress: bool = True, stop=None
) -> TrainResult:
    """Run `cfg`; with `resume`, continue the run in its output_dir from its latest checkpoint.

    `stop()` is asked after every step (with several processes, JAX's preemption sync point is
    asked instead, so every process stops at the same step): when true, the state is saved at that
    step and the run returns with `stopped_at` set.
    """
    folder = RunFolder(cfg["output_dir"])
    lead = jax.process_index() == 0
    continuing = folder.open(cfg, resume) if lead else resume
    try:
        run = Run(cfg, folder, log if lead else (lambda *a: None))
        return run.go(continuing, progress, stop or (lambda: False))
    finally:
        if lead:
            folder.close()


def _stop_now(step: int, stop) -> bool:
    """Whether to stop after `step`: every process answers alike."""
    if jax.process_count() > 1:
        return multihost_utils.reached_preemption_sync_point(step)
    return bool(stop())


def export_checkpoint(cfg: TrainConfig, step: int) -> str:
    """The checkpoint of `step` of the run `cfg` names, as `OUTPUT_DIR/model-STEP/`."""
    folder = RunFolder(cfg["output_dir"])
    checkpoints = Checkpoints(folder.file("checkpoints"), keep=cfg["checkpoint.keep"], every=1)
    try:
        if step not in checkpoints.steps():
            raise TrainError(
                f"{checkpoints.folder}: no checkpoint of step {step}; there are "
                f"{', '.join(map(str, checkpoints.steps())) or 'none'}"
            )
        saved = checkpoints.restore_saved(step)
    finally:
        checkpoints.close()
    student = ModelFolder.open(cfg["model"])
    return export_model(saved["params"], student.config, student.folder,
                        folder.file(f"model-{step}"), saved.get("aux") or None)


def chunk_rows(local_rows: int, mini_batch: int | None) -> int | None:
    """Rows per device per chunk of the cached loss: the largest divisor of the device's rows not
    above `mini_batch_size`, so every chunk is full."""
    if mini_batch is None:
        return None
    return max(d for d in range(1, min(mini_batch, local_rows) + 1) if local_rows % d == 0)


class Run:
    def __init__(self, cfg: TrainConfig, folder: RunFolder, log):
        self.cfg, self.folder, self.log = cfg, folder, log
        self.dtype = jnp.bfloat16 if cfg["dtype"] == "bfloat16" else jnp.float32
        self.mesh = Mesh(np.array(jax.devices()), (DATA,))
        devices, batch = self.mesh.devices.size, cfg["data.batch_size"]
        if batch % devices:
            raise ConfigError(
                f"data.batch_size={batch} must be a multiple of the device count ({devices})"
            )
        self.loss = setup.build_loss(cfg)
        self.student = setup.load_student(cfg, self.dtype)
        self.sets = setup.read_datasets(cfg, self.loss, folder.file("teacher"), log)
        setup.check_columns(self.sets, cfg["optim.accumulate"])
        self.prompts = setup.column_prompts(cfg, self.student, self.sets)
        no_dup = cfg["data.no_duplicates"]
        self.plan = BatchPlan(
            [s.texts for s in self.sets], [s.name for s in self.sets], batch, cfg["seed"],
            shuffle=cfg["data.shuffle"], sampler=cfg["data.sampler"],
            no_duplicates=cfg["loss.name"] in setup.IN_BATCH_NEGATIVES if no_dup is None else no_dup,
        )

    def _spec(self, graphdef) -> StepSpec:
        config, sentence = self.student.folder.config, self.student.folder.sentence
        local = self.cfg["data.batch_size"] // self.mesh.devices.size
        return StepSpec(
            graphdef=graphdef,
            loss=self.loss,
            pooling=sentence.pooling,
            normalize=sentence.normalize,
            dropout=config.hidden_dropout_prob > 0 or config.attention_probs_dropout_prob > 0,
            mesh=self.mesh,
            gather=self.cfg["loss.gather_across_devices"],
            chunk_rows=chunk_rows(local, getattr(self.loss, "mini_batch_size", None)),
        )

    def _initial_state(self, params, tx) -> dict:
        key = jax.random.fold_in(jax.random.key(self.cfg["seed"]), 2**31 - 1)
        student_dim = self.student.folder.config.hidden_size
        aux = self.loss.init_aux(key, student_dim, setup.teacher_dim(self.sets)) or {}
        trainable = {"params": params, "aux": aux}
        host = {**trainable, "opt": tx.init(trainable), "step": jnp.zeros((), jnp.int32)}
        shardings = state_sharding(self.mesh, host, self.cfg["sharding.fsdp"])
        return jax.tree.map(
            lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda i: np.asarray(x)[i]),
            host,
            shardings,
        )

    def go(self, continuing: bool, progress: bool, stop) -> TrainResult:
        cfg, start_time = self.cfg, time.monotonic()
        graphdef, params = nnx.split(self.student.model)
        params = nnx.to_pure_dict(params)
        tx = make_optimizer(cfg, cfg["steps"])
        rate = learning_rate(
            cfg["optim.lr"], cfg["optim.schedule"], cfg["optim.warmup_steps"], cfg["steps"]
        )
        state = self._initial_state(params, tx)
        checkpoints = Checkpoints(
            self.folder.file("checkpoints"), keep=cfg["checkpoint.keep"], every=cfg["checkpoint.every"]
        )
        start = 0
        latest = checkpoints.latest() if continuing else None
        if latest is not None:
            record = checkpoints.record(latest)
            if record.get("model") != self.student.folder.identity():
                raise TrainError(
                    f"{checkpoints.folder}/{latest}: the checkpoint was made from another model "
                    f"than model={cfg['model']!r} (its files differ); resume with that model"
                )
            state, start = checkpoints.restore(latest, state), latest
            self.log(f"resuming {self.folder.path} from the checkpoint of step {start}")
        spec = self._spec(graphdef)
        step_fn = jax.jit(make_step(spec, tx, rate), donate_argnums=0)
        try:
            losses, stopped = self._loop(state, step_fn, start, checkpoints, progress, stop)
        finally:
            checkpoints.wait()
            checkpoints.close()
        return TrainResult(self.folder.file("model"), cfg["steps"], losses,
                           time.monotonic() - start_time, stopped)

    def _batcher(self) -> Batcher:
        student = self.student
        ladder = bucket_ladder(student.folder.sentence.max_seq_length, self.cfg["data.buckets"])
        return Batcher(student.tokenizer, ladder, student.folder.config.pad_token_id,
                       exclude_prompt=not student.folder.sentence.include_prompt)

    def _loop(self, state, step_fn, start: int, checkpoints: Checkpoints, progress: bool, stop):
        cfg = self.cfg
        source = StepSource(
            self.sets, self.prompts, self.plan, self._batcher(), cfg["optim.accumulate"],
            cfg["steps"], Shard(jax.process_index(), jax.process_count()),
        )
        lead = jax.process_index() == 0
        metrics = MetricsLog(
            self.folder.file("metrics.jsonl"),
            self.folder.file("tensorboard") if cfg["log.tensorboard"] and lead else None,
            after_step=start,
        ) if lead else None
        bar = TrainProgress(cfg["steps"], start, cfg["data.batch_size"] * cfg["optim.accumulate"],
                            enabled=progress and lead)
        base_key = jax.random.key(cfg["seed"])
        losses: list[float] = []
        getattr(stop, "arm", lambda: None)()  # from now on a signal stops at a step's end
        try:
            for step, host in zip(range(start, cfg["steps"]), step_iterator(source, start)):
                batch = self._place(host)
                state, out = step_fn(state, batch, jax.random.fold_in(base_key, step))
                values = {k: float(v) for k, v in out.items()}
                if not math.isfinite(values["loss"]):
                    raise TrainError(
                        f"step {step + 1}: the loss is {values['loss']}; stopped. The last good "
                        f"checkpoint is step {checkpoints.latest()} in {checkpoints.folder}; "
                        "lower optim.lr or check the data, then --resume"
                    )
                losses.append(values["loss"])
                rates = bar.update(step + 1, values, int(host["real_tokens"]))
                if metrics is not None and (step + 1) % cfg["log.every"] == 0:
                    metrics.write(step + 1, {**values, **rates})
                stopping = _stop_now(step + 1, stop) and step + 1 < cfg["steps"]
                checkpoints.save(step + 1, state, self._record(step + 1),
                                 force=step + 1 == cfg["steps"] or stopping)
                if stopping:
                    checkpoints.wait()
                    return losses, step + 1
            self._finish(state, checkpoints, lead)
            self.log(f"trained {cfg['steps'] - start} steps: {bar.summary()}")
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
        return losses, None

    def _record(self, step: int) -> dict:
        return {"step": step, "seed": self.cfg["seed"], "data": {"next_step": step},
                "model": self.student.folder.identity()}

    def _place(self, host: dict) -> dict:
        arrays = {k: v for k, v in host.items() if k not in ("real_tokens", "dataset")}
        shardings = batch_sharding(self.mesh, arrays)
        rows = self.cfg["data.batch_size"]

        def global_array(name, local):
            shape = list(local.shape)
            shape[1 if name == "labels" else 2] = rows
            return jax.make_array_from_process_local_data(shardings[name], local, tuple(shape))

        return {name: global_array(name, value) for name, value in arrays.items()}

    def _finish(self, state, checkpoints: Checkpoints, lead: bool) -> None:
        checkpoints.wait()
        trained = {"params": state["params"], "aux": state["aux"]}
        if jax.process_count() > 1:  # every process takes part in gathering the shards
            trained = multihost_utils.process_allgather(trained, tiled=True)
        if not lead:
            return
        params = jax.tree.map(np.asarray, trained["params"])
        aux = jax.tree.map(np.asarray, trained["aux"]) or None
        out = export_model(params, self.student.folder.config, self.student.folder.folder,
                           self.folder.file("model"), aux)
        self.log(f"saved the sentence-transformers folder {out}")
