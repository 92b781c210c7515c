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
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from berta_jax.errors import ConfigError, TrainError
from berta_jax.loading.folder import ModelFolder
from berta_jax.train import setup
from berta_jax.train.batches import Batcher, bucket_ladder
from berta_jax.train.checkpoint import Checkpoints
from berta_jax.train.config import TrainConfig
from berta_jax.train.export import export_model
from berta_jax.train.evaluation import TrainEval
from berta_jax.train.loop import StepLoop, write_model
from berta_jax.train.metrics import MetricsLog
from berta_jax.train.optim import learning_rate, make_optimizer
from berta_jax.train.pipeline import Shard, StepSource
from berta_jax.train.plan import BatchPlan
from berta_jax.train.progress import TrainProgress
from berta_jax.train.run_folder import RunFolder
from berta_jax.train.step import DATA, StepSpec, make_step, state_sharding


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
    return export_model(
        saved["params"],
        student.config,
        student.folder,
        folder.file(f"model-{step}"),
        saved.get("aux") or None,
    )


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
        self.identity = self.student.folder.identity()
        self.evaluation = TrainEval(cfg, self.student, folder.file("best.json"))
        no_dup = cfg["data.no_duplicates"]
        self.plan = BatchPlan(
            [s.texts for s in self.sets],
            [s.name for s in self.sets],
            batch,
            cfg["seed"],
            shuffle=cfg["data.shuffle"],
            sampler=cfg["data.sampler"],
            no_duplicates=cfg["loss.name"] in setup.IN_BATCH_NEGATIVES
            if no_dup is None
            else no_dup,
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
        rate = learning_rate(
            cfg["optim.lr"], cfg["optim.schedule"], cfg["optim.warmup_steps"], cfg["steps"]
        )
        tx = make_optimizer(cfg, rate)
        state = self._initial_state(params, tx)
        checkpoints = Checkpoints(
            self.folder.file("checkpoints"),
            keep=cfg["checkpoint.keep"],
            every=cfg["checkpoint.every"],
        )
        start = 0
        latest = checkpoints.latest() if continuing else None
        if latest is not None:
            record = checkpoints.record(latest)
            if record.get("model") != self.identity:
                raise TrainError(
                    f"{checkpoints.folder}/{latest}: the checkpoint was made from another model "
                    f"than model={cfg['model']!r} (its files differ); resume with that model"
                )
            state, start = checkpoints.restore(latest, state), latest
            self.log(f"resuming {self.folder.path} from the checkpoint of step {start}")
        step_fn = jax.jit(make_step(self._spec(graphdef), tx, rate), donate_argnums=0)
        loop = self._loop(graphdef, checkpoints, start, progress)
        if jax.process_index() == 0:
            self.folder.commit(cfg)
        try:
            losses, stopped = loop.run(state, step_fn, start, stop)
        finally:
            loop.bar.close()
            if loop.metrics is not None:
                loop.metrics.close()
            checkpoints.wait()
            checkpoints.close()
        return TrainResult(
            self.folder.file("model"), cfg["steps"], losses, time.monotonic() - start_time, stopped
        )

    def _batcher(self) -> Batcher:
        student = self.student
        ladder = bucket_ladder(student.folder.sentence.max_seq_length, self.cfg["data.buckets"])
        return Batcher(
            student.tokenizer,
            ladder,
            student.folder.config.pad_token_id,
            exclude_prompt=not student.folder.sentence.include_prompt,
        )

    def _loop(self, graphdef, checkpoints: Checkpoints, start: int, progress: bool) -> StepLoop:
        cfg, lead = self.cfg, jax.process_index() == 0
        source = StepSource(
            self.sets,
            self.prompts,
            self.plan,
            self._batcher(),
            cfg["optim.accumulate"],
            cfg["steps"],
            Shard(jax.process_index(), jax.process_count()),
        )
        metrics = None
        if lead:
            tensorboard = self.folder.file("tensorboard") if cfg["log.tensorboard"] else None
            metrics = MetricsLog(self.folder.file("metrics.jsonl"), tensorboard, after_step=start)
        examples = cfg["data.batch_size"] * cfg["optim.accumulate"]
        folder = self.student.folder
        return StepLoop(
            cfg=cfg,
            mesh=self.mesh,
            source=source,
            checkpoints=checkpoints,
            metrics=metrics,
            bar=TrainProgress(cfg["steps"], start, examples, enabled=progress and lead),
            evaluation=self.evaluation,
            record=self._record,
            export=write_model(folder.folder, folder.config, self.folder, lead),
            graphdef=graphdef,
            log=self.log,
        )

    def _record(self, step: int) -> dict:
        return {
            "step": step,
            "seed": self.cfg["seed"],
            "data": {"next_step": step},
            "model": self.identity,
        }
