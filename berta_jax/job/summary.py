"""What one process of a run did: the counts and times `berta-jax encode` reports at the end."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class JobSummary:
    output: str = ""
    process: int = 0
    rows: int = 0  # embedded by this process in this run (tokens: of the same rows)
    tokens: int = 0
    rows_resumed: int = 0  # in parts an earlier run committed
    total_rows: int | None = None
    splits_done: int = 0
    splits_resumed: int = 0
    splits_total: int = 0  # of the whole run, every process's
    split_bytes: int = 0  # the plan's split size
    split_fraction: float = 0.0  # of the split in flight, by tokens (what a stop now loses)
    skipped: int = 0
    truncated: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    already_complete: bool = False
    # splits left without a part (for a resume)
    pending: list[int] = dataclasses.field(default_factory=list)
    absent: list[int] = dataclasses.field(default_factory=list)  # of the pending: no record at all
    # records of parts that did not fit their splits, each with why: deleted, embedded again
    dropped: list[str] = dataclasses.field(default_factory=list)
    fraction: float = 0.0  # of this process's share, by input bytes (an ETA needs no row count)
    output_rows: int = 0
    embed_seconds: float = 0.0  # this process's time embedding, compiles excluded
    load_seconds: float = 0.0  # start-up: loading the model (when the job loads it)
    compile_seconds: float = 0.0  # start-up: compiling programs (on first use of each shape)
    device_seconds: float = 0.0  # of which the device was computing (see runtime.RunStats)

    @property
    def texts_per_second(self) -> float:
        """Texts embedded by this run per second of embedding (start-up and compiles excluded)."""
        return self.rows / self.embed_seconds if self.embed_seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.embed_seconds if self.embed_seconds > 0 else 0.0

    @property
    def committed(self) -> int:
        """Splits with a committed part: this run's and an earlier run's."""
        return self.splits_done + self.splits_resumed

    def kept(self) -> str:
        """What a stop now keeps, in words (the split in flight is never committed)."""
        if self.committed == 0:
            return (
                f"nothing is committed yet: the first split is {self.split_fraction:.0%} done "
                "and is embedded again by a resume"
            )
        return (
            f"{self.committed} of {self.splits_total} splits committed and kept; the split in "
            f"flight ({self.split_fraction:.0%} done) is embedded again by a resume"
        )

    @property
    def device_busy(self) -> float:
        """The fraction of the embedding time the device was computing (below 1: it waited on the
        host)."""
        return min(self.device_seconds / self.embed_seconds, 1.0) if self.embed_seconds > 0 else 0.0
