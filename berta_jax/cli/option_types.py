"""The checked types of every command's options: argparse calls them on the text, so a bad value
ends as argparse's one-line error naming the option ("argument --peer-timeout: ..."), before
anything reaches JAX, XLA or Beam (a negative heartbeat timeout aborted JAX's client in C++, a NaN
split size ended in a traceback)."""

from __future__ import annotations

import argparse
import math
import re


def _integer(text: str, low: int, what: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or value < low:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def positive_int(text: str) -> int:
    """1, 2, ...: a count or a size."""
    return _integer(text, 1, "a positive integer (1, 2, ...)")


def non_negative_int(text: str) -> int:
    """0, 1, ...: an index."""
    return _integer(text, 0, "a non-negative integer (0, 1, ...)")


def number_in(low: float, high: float = math.inf, *, low_open: bool = False, what: str = ""):
    """A type: a finite number in [low, high] (or (low, high] with `low_open`); NaN and infinities
    are refused. `what` names the quantity in the error."""
    if high == math.inf:
        span = ("> " if low_open else ">= ") + f"{low:g}"
    else:
        span = f"in [{low:g}, {high:g}]"
    must = f": {what} must be" if what else " is not"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high) or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"{text!r}{must} a finite number {span}")
        return value

    return parse


def host_port(text: str) -> str:
    """HOST:PORT (a name, an IPv4 address or a bracketed IPv6 address; a port in 1-65535)."""
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})", text.strip())
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT (say 10.0.0.1:1234 or node-0:1234: process 0's address)"
        )
    return text.strip()


def byte_size(text: str) -> int:
    """`4194304`, `4M`, `512K`, `1G` -> bytes (at least 1)."""
    match = re.fullmatch(r"(\d+)([KMG]?)i?B?", text.strip(), re.IGNORECASE)
    if not match or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (say 4M, 512K or a number of bytes)"
        )
    return int(match.group(1)) * 1024 ** " KMG".index(match.group(2).upper() or " ")
