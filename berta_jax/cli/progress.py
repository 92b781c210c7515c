"""What `berta-jax encode` shows while it embeds: a bar on a terminal, else a line now and then."""

from __future__ import annotations

import os
import sys
import time

from berta_jax.job.summary import JobSummary

MIN_BAR_COLUMNS = 40  # a terminal narrower than this (or one that says 0x0) gets lines


class ProgressDisplay:
    """Per-batch progress: a tqdm bar on a terminal, else a line at the first batch and then every
    `log_every` seconds. Texts/s and tokens/s are this run's rows over its embedding seconds
    (start-up and compiles excluded: `JobSummary.embed_seconds`, what the final line divides by);
    the ETA is the embedding time per share of this process's input bytes done, times the share
    left, so it needs no row count and counts no compile time."""

    def __init__(self, *, log_every: float, stream=None):
        self.log_every, self.stream = log_every, stream or sys.stderr
        self.last: float | None = None
        self.unshown: str | None = None  # the latest status, when a line was not printed for it
        self.bar = None
        if self.stream.isatty() and _columns(self.stream) >= MIN_BAR_COLUMNS:
            from tqdm import tqdm

            self.bar = tqdm(
                total=100,
                unit="%",
                desc="",
                dynamic_ncols=True,
                file=self.stream,
                bar_format="embedding: {percentage:3.0f}%|{bar}| {desc}",
            )

    def __call__(self, p: JobSummary) -> None:
        text = _status(p)
        if self.bar is not None:
            self.bar.update(100 * p.fraction - self.bar.n)
            self.bar.set_description_str(text, refresh=False)
            return
        now = time.perf_counter()
        if self.last is not None and now - self.last < self.log_every:
            self.unshown = text
            return
        self.last, self.unshown = now, None
        print(f"embedded {text}", file=self.stream, flush=True)

    def close(self) -> None:
        """The bar's last state, or the last status no line showed: the figures the final line
        repeats."""
        if self.bar is not None:
            self.bar.close()
        elif self.unshown is not None:
            print(f"embedded {self.unshown}", file=self.stream, flush=True)


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


def _status(p: JobSummary) -> str:
    """`120/2000 texts, 6% (0 resumed), 35.2 texts/s, 2,131 tokens/s, ETA 53 s`."""
    total = f"/{p.total_rows}" if p.total_rows is not None else ""
    speed = (
        f", {p.texts_per_second:.1f} texts/s, {p.tokens_per_second:,.0f} tokens/s"
        if p.rows and p.embed_seconds > 0
        else " (first batch)"
    )
    eta = (
        f", ETA {p.embed_seconds / p.fraction * (1 - p.fraction):.0f} s"
        if 0 < p.fraction and p.embed_seconds > 0
        else ""
    )
    return (
        f"{p.rows + p.rows_resumed}{total} texts, {p.fraction:.0%} ({p.rows_resumed} resumed)"
        f"{speed}{eta}"
    )
