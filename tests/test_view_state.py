"""What the view derives from the stream: liveness by the wire's heartbeat rule, score history, band and drift."""

from __future__ import annotations

import time

import msgspec

from edge.client.subscriber import FrameEvent, HealthEvent
from edge.client.view.state import ViewState, review_threshold
from edge.wire import SCHEMA_VERSION, CameraHealth, FrameHeader, Health
from viewpage import header


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def health(seq=0, cameras=("cam1",), state="streaming", period_s=1.0, camera_type=CameraHealth, **extra) -> HealthEvent:
    cams = [camera_type(camera=c, state=state, fps=10.0, **extra) for c in cameras]
    h = Health(schema_version=SCHEMA_VERSION, daemon="d1", seq=seq, time_ns=time.time_ns(), period_s=period_s, uptime_s=1.0,
               backend="onnxruntime", model_id="m" * 64, image_threshold=0.5, cameras=cams)
    return HealthEvent(health=h, received_ns=time.time_ns())


def frame(h: FrameHeader, lost=0) -> FrameEvent:
    return FrameEvent(header=h, mask=None, received_ns=time.time_ns(), lost=lost)


def camera(state: ViewState, name="cam1") -> dict:
    return next(c for c in state.snapshot()[0]["cameras"] if c["camera"] == name)


def test_never_heard_then_alive_then_down_after_three_missed_heartbeats():
    clock = Clock()
    state = ViewState(clock=clock)
    state.on_frame(frame(header()))
    assert camera(state)["status"] == "down" and not state.snapshot()[0]["heard_any"]  # until the first heartbeat
    state.on_health(health(period_s=0.5))
    assert camera(state)["status"] == "ok"
    clock.t += 1.4
    assert camera(state)["status"] == "ok"
    clock.t += 0.2  # 1.6 s > 3 x 0.5 s
    cam = camera(state)
    assert cam["status"] == "down" and "silent for 1.6 s" in cam["why"] and cam["heartbeat_age_s"] > 1.5
    state.on_health(health(seq=5, period_s=0.5))
    assert camera(state)["status"] == "ok"


def test_a_failed_camera_is_down_and_a_reconnecting_one_a_warning():
    state = ViewState()
    state.on_health(health(state="failed", last_error="no such device"))
    assert camera(state)["status"] == "down" and "no such device" in camera(state)["why"]
    state.on_health(health(seq=1, state="reconnecting"))
    assert camera(state)["status"] == "warn"


def test_points_come_once_per_cursor_and_old_ones_leave_the_history():
    state = ViewState(history_s=10.0)
    state.on_frame(frame(header(seq=1, score=0.2)))
    body, cursor = state.snapshot(0)
    assert [p[1:] for p in body["points"]["cam1"]] == [[0.2, 0.5, None, "defect"]]
    body, cursor = state.snapshot(cursor)
    assert body["points"] == {}
    state.on_frame(frame(header(seq=2, score=float("nan"), verdict="unknown"), lost=2))
    body, cursor = state.snapshot(cursor)
    assert len(body["points"]["cam1"]) == 1 and body["points"]["cam1"][0][1] is None
    assert camera(state)["lost"] == 2 and camera(state)["seq"] == 2
    state._cameras["cam1"].points[0] = (1, time.time_ns() / 1e6 - 20_000, 0.1, 0.5, None, "ok")  # 20 s old
    state.on_frame(frame(header(seq=3)))
    assert len(state.snapshot(0)[0]["points"]["cam1"]) == 2


def test_the_uncertain_band_and_drift_are_read_from_the_wire():
    assert review_threshold(header()) is None  # no band: review_threshold NaN
    banded = msgspec.structs.replace(header(), review_threshold=0.4)
    assert review_threshold(banded) == 0.4
    assert review_threshold(msgspec.structs.replace(header(), review_threshold=0.7)) is None  # not below the threshold: no band
    state = ViewState()
    state.on_health(health(drift=0.31, drift_state="high"))
    state.on_frame(frame(banded))
    cam = camera(state)
    assert cam["review_threshold"] == 0.4 and cam["drift"] == 0.31
    assert cam["status"] == "warn" and "drift" in cam["why"]
    assert state.snapshot(0)[0]["points"]["cam1"][0][3] == 0.4
