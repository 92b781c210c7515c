"""The compute dtype `"auto"` stands for, and why: bfloat16 where the hardware multiplies it
natively, else float32.

bfloat16 pays where matrix units take it and accumulate in float32: TPUs, GPUs, and CPUs with AMX or
AVX512-BF16 (XLA:CPU then runs the model's bf16 dots, which accumulate in float32, through
oneDNN/AMX at several times its float32 rate). Without such a unit XLA:CPU upcasts bf16 dots to
float32, which is slower than float32 itself. float32 stays the default everywhere: it is the
PyTorch-parity mode.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
NAMES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class DtypeChoice:
    """A compute dtype by name, and what decided it (shown in job reports and `compile_stats`)."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def cpu_bf16_unit(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str | None, str]:
    """(the bf16 matrix flag this CPU has, or None; how that was found)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError as e:
        return None, f"cannot read {cpuinfo} ({e.strerror or e})"
    # one "flags" line per processor: a flag counts only when every processor has it (a process may
    # run on any of them, and a line of another processor's flags says nothing of this one's)
    lines = [set(line.split(":", 1)[1].split()) for line in re.findall(r"(?m)^flags\s*:.*$", text)]
    common = set.intersection(*lines) if lines else set()
    found = next((flag for flag in CPU_BF16_FLAGS if flag in common), None)
    if found:
        return found, f"CPU flag {found} on all {len(lines)} processors"
    return None, f"no {' or '.join(CPU_BF16_FLAGS)} on every processor in {cpuinfo}"


def choose_dtype(
    requested: str, platform: str, cpuinfo: str | Path = "/proc/cpuinfo"
) -> DtypeChoice:
    """`requested` ("auto" or a dtype name) for a device `platform` ("cpu", "gpu", "tpu", ...)."""
    if requested != "auto":
        if requested not in NAMES:
            raise ValueError(f"dtype={requested!r}: choose 'auto' or one of {', '.join(NAMES)}")
        return DtypeChoice(requested, "asked for")
    if platform != "cpu":
        return DtypeChoice("bfloat16", f"auto: a {platform.upper()} multiplies bfloat16 natively")
    flag, how = cpu_bf16_unit(cpuinfo)
    if flag:
        return DtypeChoice("bfloat16", f"auto: {how}")
    return DtypeChoice("float32", f"auto: {how}, so bfloat16 would run slower than float32")
