"""Evaluation during a run: every `eval.every` steps (and once before the first), the evaluators
of the `[eval]` table (`berta_jax.evaluate`) run on the current weights, their metrics are logged
beside the losses, and the weights that score best on `eval.metric` are kept as a
sentence-transformers folder, `OUTPUT_DIR/best/` (with `best.json`: the step and the value).
"""

from __future__ import annotations

import json
import os

import numpy as np
from flax import nnx

from berta_jax.errors import ConfigError
from berta_jax.evaluate.builder import build_evaluators, metric_names, run_evaluators
from berta_jax.runtime.encoder import Encoder
from berta_jax.storage.local import LocalStore
from berta_jax.train.config import TrainConfig

# Metrics where lower is better; every other one (nDCG, MRR, accuracy, correlations) rises.
LOWER_IS_BETTER = ("loss",)


class TrainEval:
    def __init__(self, cfg: TrainConfig, student, best_file: str):
        spec = {k: v for k, v in cfg.section("eval").items() if k not in ("every", "metric")}
        self.evaluators = build_evaluators(spec) if spec else []
        self.every = cfg["eval.every"] or cfg["checkpoint.every"]
        self.metric, self.student, self.best_file = cfg["eval.metric"], student, best_file
        names = metric_names(self.evaluators)
        if self.metric and self.metric not in names:
            raise ConfigError(
                f"eval.metric={self.metric!r}: the evaluators give {', '.join(names) or 'none'}"
            )
        if self.evaluators and not self.metric:
            self.metric = names[0]
        self.best = None
        if os.path.exists(best_file):
            with open(best_file) as f:
                self.best = json.load(f)["value"]

    def due(self, step: int, last: int) -> bool:
        return bool(self.evaluators) and (step % self.every == 0 or step == last)

    def run(self, graphdef, params) -> dict[str, float]:
        """The evaluators' metrics on `params` (host arrays), named `eval/<evaluator>/<metric>`."""
        folder = self.student.folder
        model = nnx.merge(graphdef, params)
        encoder = Encoder(model, self.student.tokenizer, folder.sentence, name=folder.name)
        return {f"eval/{k}": v for k, v in run_evaluators(self.evaluators, encoder).items()}

    def improved(self, metrics: dict[str, float]) -> bool:
        """Whether `metrics` beat the best so far on `eval.metric`."""
        value = metrics[f"eval/{self.metric}"]
        lower = self.metric.endswith(LOWER_IS_BETTER)
        return self.best is None or (value < self.best if lower else value > self.best)

    def keep_best(self, metrics: dict[str, float], step: int) -> None:
        """Record `metrics` as the best (after the best folder was written)."""
        self.best = metrics[f"eval/{self.metric}"]
        record = {"step": step, "metric": self.metric, "value": self.best}
        LocalStore().write(self.best_file, json.dumps(record).encode())


def host_params(tree) -> dict:
    return {k: host_params(v) if isinstance(v, dict) else np.asarray(v) for k, v in tree.items()}
