"""Default sizes of the edge benchmark, in one place for `ssae edge bench` (edge/tools/cli.py) and edge/tools/bench.py.

Its own module because edge/tools/bench.py imports numpy and the CLI must start without it.
"""

from __future__ import annotations

import msgspec


class BenchDefaults(msgspec.Struct, frozen=True, kw_only=True):
    frames: int = 600  # end-to-end video: long enough that warm-up is a small share of the steady state
    latency_frames: int = 200  # paced latency run: enough samples for a p99
    measure_s: float = 4.0  # per batch size in the raw timing
    rounds: int = 3  # rounds of raw-then-daemon per set-up; every round must reach the target, each is reported


DEFAULTS = BenchDefaults()
