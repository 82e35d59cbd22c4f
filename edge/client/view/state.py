"""What the view knows of the stream: the latest frame, a score history and the heartbeats, per camera.

The feed thread writes (`on_frame`, `on_health`, `on_bad`); web handlers read (`latest`, `snapshot`).
One lock guards it all and every call under it is short, so a slow page never holds up the feed.
Liveness is judged here, on this box's monotonic clock: an inspector whose heartbeat is older than
`missed_heartbeats` periods is down, and so is one never heard (the wire's rule, README section 6).

Fields the wire does not carry yet are read with getattr, so the page uses them as soon as they exist:
`FrameHeader.review_threshold` (the lower threshold of an uncertain band) and `CameraHealth.drift` /
`CameraHealth.drift_state` (rolling good-score quantile and "ok" / "warning").
"""

from __future__ import annotations

import collections
import itertools
import math
import threading
import time
from collections.abc import Callable

from edge.client.subscriber import FrameEvent, HealthEvent
from edge.wire import CameraHealth, FrameHeader, Health

HEALTHY_STATES = ("streaming", "finished")


class LiveFrame:
    """The latest frame of a camera as received: its header, the mask part and the map part (None when not sent)."""

    __slots__ = ("header", "mask", "version", "received_ns", "map")

    def __init__(self, header: FrameHeader, mask: bytes | None, version: int, received_ns: int, map: bytes | None = None):
        self.header, self.mask, self.version, self.received_ns, self.map = header, mask, version, received_ns, map


class _Camera:
    __slots__ = ("latest", "points", "frames", "lost", "dropped", "restarts")

    def __init__(self):
        self.latest: LiveFrame | None = None
        self.points: collections.deque[tuple] = collections.deque()  # (id, t_ms, score, thr, review_thr, verdict)
        self.frames = self.lost = self.dropped = self.restarts = 0


class _Daemon:
    __slots__ = ("health", "rx_s", "missed")

    def __init__(self, health: Health, rx_s: float):
        self.health, self.rx_s, self.missed = health, rx_s, 0


def finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def review_threshold(header: FrameHeader) -> float | None:
    """The uncertain band's lower edge when the header carries one below the threshold; None otherwise."""
    low = finite(getattr(header, "review_threshold", None))
    high = finite(header.threshold)
    return low if low is not None and high is not None and low < high else None


class ViewState:
    def __init__(
        self,
        *,
        history_s: float = 300.0,
        max_points: int = 20_000,  # per camera: bounds memory (and the first page load) at high frame rates
        missed_heartbeats: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.history_s = history_s
        self.max_points = max_points
        self.missed_heartbeats = missed_heartbeats
        self.clock = clock
        self.started_s = clock()
        self._lock = threading.Lock()
        self._cameras: dict[str, _Camera] = {}
        self._daemons: dict[str, _Daemon] = {}
        self._next_point = 1
        self.bad_messages = 0
        self.last_bad = ""

    # --- written by the feed thread -------------------------------------------------------------------
    def on_frame(self, event: FrameEvent) -> None:
        h = event.header
        with self._lock:
            cam = self._cameras.setdefault(h.camera, _Camera())
            version = cam.latest.version + 1 if cam.latest else 1
            cam.latest = LiveFrame(h, event.mask, version, event.received_ns, event.map)
            cam.frames += 1
            cam.lost += event.lost
            cam.dropped += h.dropped
            cam.restarts += event.restarted
            t_ms = event.received_ns / 1e6  # this box's clock, the same one `snapshot` reports as now
            cam.points.append((self._next_point, t_ms, finite(h.score), finite(h.threshold), review_threshold(h), h.verdict))
            self._next_point += 1
            while cam.points and (len(cam.points) > self.max_points or cam.points[0][1] < t_ms - self.history_s * 1000):
                cam.points.popleft()

    def on_health(self, event: HealthEvent) -> None:
        h = event.health
        with self._lock:
            d = self._daemons.get(h.daemon)
            if d is None:
                d = self._daemons[h.daemon] = _Daemon(h, self.clock())
            d.health, d.rx_s = h, self.clock()
            d.missed += event.missed
            for c in h.cameras:
                self._cameras.setdefault(c.camera, _Camera())

    def on_bad(self, error: str) -> None:
        with self._lock:
            self.bad_messages += 1
            self.last_bad = error

    # --- read by the web handlers ---------------------------------------------------------------------
    def latest(self, camera: str) -> LiveFrame | None:
        with self._lock:
            cam = self._cameras.get(camera)
            return cam.latest if cam else None

    def snapshot(self, cursor: int = 0) -> tuple[dict, int]:
        """Everything the page shows, with the score points newer than `cursor`; returns the new cursor."""
        now_s, now_ms = self.clock(), time.time_ns() / 1e6
        with self._lock:
            daemons = {name: self._daemon_view(d, now_s) for name, d in sorted(self._daemons.items())}
            owner = {c.camera: (name, c) for name, d in self._daemons.items() for c in d.health.cameras}
            cameras, points = [], {}
            for name, cam in sorted(self._cameras.items()):
                daemon, health = owner.get(name, (None, None))
                cameras.append(self._camera_view(name, cam, daemons.get(daemon), health))
                new = list(itertools.takewhile(lambda p: p[0] > cursor, reversed(cam.points)))  # ids rise: newest first
                if new:
                    points[name] = [list(p[1:]) for p in reversed(new)]
            body = {
                "now_ms": now_ms,
                "heard_any": bool(self._daemons),
                "listening_s": now_s - self.started_s,
                "bad_messages": self.bad_messages,
                "last_bad": self.last_bad,
                "daemons": list(daemons.values()),
                "cameras": cameras,
                "points": points,
            }
            return body, self._next_point - 1

    def _daemon_view(self, d: _Daemon, now_s: float) -> dict:
        h = d.health
        age_s = now_s - d.rx_s
        period_s = h.period_s if h.period_s > 0 else 1.0
        return {
            "daemon": h.daemon, "age_s": age_s, "period_s": period_s, "limit_s": self.missed_heartbeats * period_s,
            "down": age_s > self.missed_heartbeats * period_s, "seq": h.seq, "missed": d.missed,
            "backend": h.backend, "model_id": h.model_id, "uptime_s": h.uptime_s,
            "image_threshold": finite(h.image_threshold), "publish_dropped": h.publish_dropped,
        }

    def _camera_view(self, name: str, cam: _Camera, daemon: dict | None, health: CameraHealth | None) -> dict:
        status, why = _status(daemon, health)
        view = {
            "camera": name, "status": status, "why": why, "daemon": daemon["daemon"] if daemon else None,
            "heartbeat_age_s": daemon["age_s"] if daemon else None, "frames": cam.frames, "lost": cam.lost,
            "dropped": cam.dropped, "restarts": cam.restarts, "frame_version": 0,
        }
        if health is not None:
            view.update(state=health.state, fps=health.fps, frames_dropped=health.frames_dropped,
                        frames_judged=health.frames_judged, reconnects=health.reconnects, last_error=health.last_error,
                        drift=finite(getattr(health, "drift", None)), drift_state=getattr(health, "drift_state", None) or None)
        if cam.latest is not None:
            h = cam.latest.header
            view.update(frame_version=cam.latest.version, seq=h.seq, verdict=h.verdict, score=finite(h.score),
                        threshold=finite(h.threshold), review_threshold=review_threshold(h),
                        pixel_threshold=finite(h.pixel_threshold), model_id=h.model_id, reason=h.reason,
                        regions=len(h.regions), capture_ns=h.capture_ns, source=h.source)
        return view


def _status(daemon: dict | None, health: CameraHealth | None) -> tuple[str, str]:
    """("ok" | "warn" | "down", why): down is red on the page and means "not inspecting"."""
    if daemon is None:
        return "down", "no heartbeat from an inspector naming this camera: treat it as not inspected"
    if daemon["down"]:
        return "down", f"inspector {daemon['daemon']} silent for {daemon['age_s']:.1f} s (limit {daemon['limit_s']:.1f} s)"
    if health is None:
        return "warn", "the inspector's heartbeat does not list this camera"
    if health.state not in HEALTHY_STATES:
        detail = f": {health.last_error}" if health.last_error else ""
        return ("down" if health.state == "failed" else "warn"), f"camera {health.state}{detail}"
    if getattr(health, "drift_state", "ok") not in (None, "", "ok"):
        return "warn", f"score drift {health.drift_state}"
    return "ok", ""
