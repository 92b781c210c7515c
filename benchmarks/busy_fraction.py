"""The device-busy fraction (`Encoder.run_stats`) against a host that makes the device wait: a host that
spends N times a batch's wall time on each result should leave the device idle most of the time.

  python benchmarks/busy_fraction.py            # host work 0x and 4x a batch's time
  python benchmarks/busy_fraction.py --host 0 1 4 8

A ratio of timings: it belongs here, not in the test suite (on a loaded machine the batches' own time varies
more than the effect). The tests check the accounting itself (batches counted, busy <= wall).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", type=float, nargs="+", default=[0.0, 4.0],
                        help="host work per result, in batch times")
    args = parser.parse_args()
    from berta_jax import Encoder
    from tests.checkpoints import make_random_bert

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_random_bert(Path(tmp) / "tiny", seed=7, hidden_size=16, num_attention_heads=2,
                                  num_hidden_layers=2, intermediate_size=24, max_position_embeddings=32)
        encoder = Encoder.from_pretrained(folder)
        texts = [f"text number {i} " * (1 + i % 7) for i in range(24)]
        prepared = encoder.prepare(texts, max_batch_tokens=64)
        encoder.encode(texts, max_batch_tokens=64)  # compiled
        stats, per_batch = encoder.run_stats, 0.0
        for host in sorted(args.host):
            before = (stats.batches, stats.device_seconds, stats.wall_seconds)
            for _ in encoder.run_batches(prepared.batches):
                time.sleep(host * per_batch)  # the host's own work on each result (writing, say)
            batches, busy, wall = (now - then for now, then in zip(
                (stats.batches, stats.device_seconds, stats.wall_seconds), before))
            per_batch = max(per_batch, wall / batches)
            print(f"host work {host:g}x a batch: {batches} batches, device busy {busy / wall:.1%} "
                  f"of {wall:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
