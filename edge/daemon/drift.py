"""Drift: are the parts judged good still scoring like the good samples the calibration was fitted on?

A dirty lens, a lighting change or a new batch of material moves the scores of good parts long before it
moves many of them over the threshold. Per camera this keeps the scores of the last `window` parts judged
"ok" and places their `quantile` (p90 by default) in the calibration's good-score band (`good_stats`):

    drift = (q - p50) / (p99 - p50)     0 = the calibrated good median, 1 = the calibrated good p99

    warming-up   fewer than `window` good parts seen since start (or since the model or calibration changed)
    ok           0 <= drift <= 1: inside the calibrated band
    high         drift > 1: good parts score like the calibration's worst 1 %: expect false rejects soon
    low          drift < 0: good parts score below the calibration's median: e.g. a dark or blank image
    ""           not checked: drift.window = 0, or the calibration has no good-score statistics

"review" and "defect" parts are left out: the band describes good parts, and a shift up shows first in the
parts still judged good. A state leaving the band is logged as a warning (rate-limited); the heartbeat
carries drift and state per camera (CameraHealth), and so do the metrics.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from collections.abc import Iterable

import numpy as np

from edge.daemon.config import DriftConfig
from edge.manifest import ScoreStats
from edge.ratelimit import RateLimitedLog

log = logging.getLogger("edge.drift")
NAN = float("nan")
STATES = ("ok", "high", "low", "warming-up")


class Drift:
    """Written by the inference thread (`observe`), read by the heartbeat and /metrics (`state`); thread-safe."""

    def __init__(self, cfg: DriftConfig, cameras: Iterable[str], reference: ScoreStats | None = None):
        self.cfg = cfg
        self._lock = threading.Lock()
        self._scores = {c: collections.deque(maxlen=max(1, cfg.window)) for c in cameras}
        self._reference = reference  # the model's at start; `observe` follows reloads
        self._states = {c: "" for c in self._scores}
        self.errors = RateLimitedLog(log)

    def observe(self, camera: str, score: float, verdict: str, reference: ScoreStats | None) -> None:
        """One judged frame; `reference` is the good-score statistics of the calibration that judged it."""
        if self.cfg.window == 0:
            return
        with self._lock:
            if reference != self._reference:  # another model or calibration: its scores are another scale
                self._reference = reference
                for scores in self._scores.values():
                    scores.clear()
            if verdict == "ok" and math.isfinite(score):
                self._scores[camera].append(score)

    def state(self, camera: str) -> tuple[float, str]:
        """(drift, drift_state) of one camera now; logs when the state leaves or re-enters the band."""
        with self._lock:
            ref, scores = self._reference, self._scores.get(camera)
            values = np.fromiter(scores, np.float64) if scores is not None else np.empty(0)
            previous = self._states.get(camera, "")
        lo, hi = (ref.p50, ref.p99) if ref is not None and ref.count else (NAN, NAN)
        if self.cfg.window == 0 or not hi > lo:  # no band to compare with (NaN compares false too)
            return NAN, ""
        if len(values) < self.cfg.window:
            drift, state = NAN, "warming-up"
        else:
            q = float(np.quantile(values, self.cfg.quantile))
            drift = (q - lo) / (hi - lo)
            state = "high" if drift > 1 else "low" if drift < 0 else "ok"
        with self._lock:
            self._states[camera] = state
        if state != previous and state in ("high", "low"):
            self.errors.log(
                ("drift", camera, state), logging.WARNING,
                "camera %s: good parts score %s: p%g of the last %d parts judged ok = %.4g, outside the calibrated good band "
                "p50 %.4g .. p99 %.4g (drift %.2f); check the lens, lighting and part presentation, or recalibrate",
                camera, "high" if state == "high" else "low", self.cfg.quantile * 100, len(values), q, lo, hi, drift,
            )
        elif state == "ok" and previous in ("high", "low"):
            self.errors.log(("drift-ok", camera), logging.INFO, "camera %s: good-part scores are back inside the calibrated band (drift %.2f)", camera, drift)
        return drift, state
