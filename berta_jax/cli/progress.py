"""What `berta-jax encode` shows while it embeds: a bar on a terminal, else a line now and then."""

from __future__ import annotations

import sys
import time

from berta_jax.job.summary import JobSummary


class ProgressDisplay:
    """Per-batch progress: a tqdm bar on a terminal, else a line at the first batch and then every
    `log_every` seconds. Texts/s and tokens/s are over the same rows (those embedded by this run)
    and measured from the end of the first batch, so the first program's compile time does not
    distort them; the ETA comes from the share of this process's input bytes done, which needs no
    row count."""

    def __init__(self, *, log_every: float, stream=None):
        self.log_every, self.stream = log_every, stream or sys.stderr
        # (time, rows, tokens, fraction) at the first batch
        self.first: tuple[float, int, int, float] | None = None
        self.last: float | None = None
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=100,
                unit="%",
                desc="embedding",
                dynamic_ncols=True,
                file=self.stream,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
            )

    def __call__(self, p: JobSummary) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, p.rows, p.tokens, p.fraction)
        elapsed = now - self.first[0]
        rate = (p.rows - self.first[1]) / elapsed if elapsed > 0 else 0.0
        tokens = (p.tokens - self.first[2]) / elapsed if elapsed > 0 else 0.0
        moved = p.fraction - self.first[3]
        eta = f", ETA {elapsed / moved * (1 - p.fraction):.0f} s" if moved > 0 else ""
        done = p.rows + p.rows_resumed
        total = f"/{p.total_rows}" if p.total_rows is not None else ""
        if self.bar is not None:
            self.bar.update(100 * p.fraction - self.bar.n)
            self.bar.set_postfix_str(
                f"{done}{total} texts, {tokens:,.0f} tokens/s{eta}", refresh=False
            )
            return
        if self.last is not None and now - self.last < self.log_every:
            return
        self.last = now
        speed = f", {rate:.1f} texts/s, {tokens:,.0f} tokens/s" if rate > 0 else " (first batch)"
        print(
            f"embedded {done}{total} texts, {p.fraction:.0%} ({p.rows_resumed} resumed)"
            f"{speed}{eta}",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
