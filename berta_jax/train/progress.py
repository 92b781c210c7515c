"""What a person watching a run sees: a tqdm bar with the step, loss, learning rate, examples/s,
real tokens/s and the ETA, and the rates each metrics line records.

The rates count from the first step this process ran after the step program compiled (step one's
time is compilation, reported apart), so they measure training, not start-up.
"""

from __future__ import annotations

import time

from tqdm import tqdm


class TrainProgress:
    def __init__(self, steps: int, start: int, examples_per_step: int, enabled: bool = True):
        self.bar = tqdm(
            total=steps,
            initial=start,
            unit="step",
            disable=not enabled,
            dynamic_ncols=True,
            desc="train",
        )
        self.examples_per_step = examples_per_step
        self.started: float | None = None  # after the first (compiling) step
        self.first_step = start
        self.steps_timed = 0
        self.tokens = 0
        self.compile_seconds: float | None = None
        self._t0 = time.monotonic()

    def update(self, step: int, values: dict, real_tokens: int) -> dict:
        """Record step `step` (1-based) and return its rates."""
        now = time.monotonic()
        if self.started is None:
            self.compile_seconds, self.started = now - self._t0, now
            rates = {}
        else:
            self.steps_timed += 1
            self.tokens += real_tokens
            elapsed = max(now - self.started, 1e-9)
            rates = {
                "examples_per_s": self.steps_timed * self.examples_per_step / elapsed,
                "tokens_per_s": self.tokens / elapsed,
            }
        self.bar.update(1)
        shown = {"loss": f"{values['loss']:.4f}", "lr": f"{values['lr']:.2e}"}
        if rates:
            shown["ex/s"] = f"{rates['examples_per_s']:.1f}"
            shown["tok/s"] = f"{rates['tokens_per_s']:.0f}"
        self.bar.set_postfix(shown, refresh=False)
        return rates

    def summary(self) -> str:
        if not self.steps_timed:
            return f"first step (compile included) {self.compile_seconds or 0:.1f} s"
        elapsed = time.monotonic() - self.started
        return (
            f"{self.steps_timed * self.examples_per_step / elapsed:.1f} examples/s, "
            f"{self.tokens / elapsed:.0f} real tokens/s after a first step (compile included) "
            f"of {self.compile_seconds:.1f} s"
        )

    def close(self) -> None:
        self.bar.close()
