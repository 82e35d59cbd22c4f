"""When the reject coil is on: a schedule of pulses, none of which may be lost.

Times are `time.monotonic()` seconds. Two policies for defects that come faster than one pulse:

- "extend": every defect owns the interval [start, start + pulse); the coil is on while any interval
  is. Overlapping pulses merge into one longer pulse, so the ejector stays on while defective parts
  pass (air jets, flaps). Every defect is covered for its full pulse time.
- "queue": every defect gets its own pulse with at least `min_gap` of off time before it, starting
  later than asked if need be (counted as delayed). For gates that count edges (a diverter that
  takes one part per edge). A queue longer than the line can absorb shows up as growing delay.
"""

from __future__ import annotations

import bisect
from typing import Literal


class PulseSchedule:
    """Pulse intervals in the future; owned by the PLC thread."""

    def __init__(self, pulse_s: float, overlap: Literal["extend", "queue"] = "extend", min_gap_s: float = 0.02) -> None:
        self.pulse_s = pulse_s
        self.overlap = overlap
        self.min_gap_s = min_gap_s
        self._intervals: list[list] = []  # [start, end, seen], sorted by start; seen: reported active once
        self._last_end = float("-inf")  # "queue": end of the latest pulse handed out
        self.pulses = 0  # pulses scheduled
        self.late = 0  # started later than asked because of latency (above the configured delay) or a slow PLC
        self.deferred = 0  # "queue": started later than asked to keep pulses apart

    def add(self, start_s: float, now_s: float) -> tuple[float, float]:
        """Schedule one pulse asked to start at `start_s`; returns the interval it got."""
        if start_s < now_s:
            self.late += start_s < now_s - 0.001  # a millisecond of jitter is not "late"
            start_s = now_s
        if self.overlap == "queue" and start_s < self._last_end + self.min_gap_s:
            start_s = self._last_end + self.min_gap_s
            self.deferred += 1
        end_s = start_s + self.pulse_s
        self._last_end = max(self._last_end, end_s)
        bisect.insort(self._intervals, [start_s, end_s, False])
        self.pulses += 1
        return start_s, end_s

    def active(self, now_s: float) -> bool:
        """True while any pulse covers `now_s`. Call it when the result is written to the coil.

        A pulse whose whole interval passed before anyone asked (a PLC request that stalled the thread)
        is delivered late and in full rather than lost. Ended pulses are forgotten.
        """
        on = False
        for iv in self._intervals:
            if iv[0] > now_s:
                break
            if not iv[2]:
                iv[2] = True
                if iv[1] <= now_s:
                    iv[0], iv[1] = now_s, now_s + self.pulse_s
                    self.late += 1
            on = on or iv[1] > now_s
        self._intervals = [iv for iv in self._intervals if iv[1] > now_s]
        return on

    def drop_ended(self, now_s: float) -> int:
        """Forget pulses that ended without being delivered (the PLC was unreachable); returns how many."""
        before = len(self._intervals)
        self._intervals = [iv for iv in self._intervals if iv[1] > now_s]
        return before - len(self._intervals)

    def next_change_s(self, now_s: float) -> float:
        """The next moment the coil may have to change (a start or an end after now); inf when idle."""
        times = [t for iv in self._intervals for t in iv[:2] if t > now_s]
        return min(times, default=float("inf"))

    @property
    def pending(self) -> int:
        return len(self._intervals)
