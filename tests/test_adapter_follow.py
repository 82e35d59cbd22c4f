"""The state view the OPC UA and MQTT adapters share, fed with real subscriber events (no sockets needed:
the rules are about time and sequence numbers; the adapters' own tests run them over real sockets), and a
review verdict through a real subscriber."""

from __future__ import annotations

import time

from edge import wire
from edge.adapter.follow import FollowConfig, Inspector
from edge.client.subscriber import CameraTally, FrameEvent, HealthEvent, HeartbeatLost, Tally


def health(*cameras: wire.CameraHealth, seq: int = 0) -> HealthEvent:
    body = wire.Health(schema_version=1, daemon="d1", seq=seq, time_ns=time.time_ns(), period_s=1.0, uptime_s=0.0, backend="ort", model_id="m", image_threshold=0.5, cameras=list(cameras))
    return HealthEvent(health=body, received_ns=time.time_ns())


def frame(seq: int, *, lost: int = 0, dropped: int = 0, verdict: str = "ok", camera: str = "cam1") -> FrameEvent:
    h = wire.FrameHeader(schema_version=1, camera=camera, seq=seq, capture_ns=1, publish_ns=2, score=0.1, threshold=0.5, verdict=verdict, model_id="m", dropped=dropped)
    return FrameEvent(header=h, mask=None, received_ns=3, lost=lost)


def tally(**counts) -> Tally:
    cams = [CameraTally(camera=name, last_seq=0, frames=f, lost=lo, dropped=d, restarts=0) for name, (f, lo, d) in counts.items()]
    return Tally(cameras=cams, heartbeats=1, heartbeats_missed=0, heartbeat_losses=0, bad_messages=0)


STREAMING = wire.CameraHealth(camera="cam1", state="streaming")


def test_unavailable_until_the_first_heartbeat_then_ready_busy_ready():
    insp = Inspector(FollowConfig(endpoint="tcp://x:1", cameras=["cam1"], idle_after_s=1.0))
    view = insp.view(0.0, tally())
    assert (view.state, view.reason, view.cameras[0].state) == ("unavailable", "waiting for the first heartbeat", "unavailable")
    insp.on_event(health(STREAMING), 0.0)
    assert insp.view(0.0, tally()).state == "ready"
    insp.on_event(frame(0, verdict="defect"), 0.5)
    view = insp.view(0.6, tally(cam1=(1, 0, 0)))
    assert view.state == "busy" and view.cameras[0].defects == 1 and view.cameras[0].frames == 1 and not view.cameras[0].stale
    assert insp.view(1.6, tally()).state == "ready"  # idle_after_s without a frame


def test_lost_frames_and_daemon_drops_give_error_for_recover_after_s():
    insp = Inspector(FollowConfig(endpoint="tcp://x:1", cameras=["cam1"], recover_after_s=2.0, on_dropped="error"))
    insp.on_event(health(STREAMING), 0.0)
    insp.on_event(frame(5, lost=2), 1.0)
    view = insp.view(1.0, tally(cam1=(1, 2, 0)))
    assert view.state == "error" and view.reason == "cam1: 2 frame(s) lost on the way before seq 5" and view.cameras[0].lost == 2
    assert not view.cameras[0].stale  # the result itself is fresh
    assert insp.view(3.1, tally()).state in ("ready", "busy")
    insp.on_event(frame(7, dropped=1), 4.0)
    assert insp.view(4.0, tally()).cameras[0].reason == "the daemon dropped 1 frame(s) before seq 7"


def test_heartbeat_lost_makes_everything_unavailable_and_stale():
    insp = Inspector(FollowConfig(endpoint="tcp://x:1", cameras=["cam1"]))
    insp.on_event(health(STREAMING), 0.0)
    insp.on_event(frame(0), 0.0)
    insp.on_event(HeartbeatLost(daemon="d1", silent_s=3.2, limit_s=3.0), 3.2)
    view = insp.view(3.2, tally())
    assert (view.state, view.reason) == ("unavailable", "no heartbeat from d1 for 3.2 s")
    assert view.cameras[0].state == "unavailable" and view.cameras[0].stale
    insp.on_event(health(STREAMING, seq=4), 4.0)
    assert insp.view(4.0, tally()).state in ("ready", "busy")
    insp.stopping()
    assert insp.view(4.0, tally()).reason == "adapter stopping"


def test_every_reported_camera_when_none_configured_and_worst_wins():
    insp = Inspector(FollowConfig(endpoint="tcp://x:1"))
    insp.on_event(health(), 0.0)
    assert (insp.view(0.0, tally()).state, insp.view(0.0, tally()).reason) == ("error", "the daemon reports no cameras")
    insp.on_event(health(STREAMING, wire.CameraHealth(camera="cam2", state="failed", last_error="no device")), 0.0)
    view = insp.view(0.0, tally())
    assert [c.camera for c in view.cameras] == ["cam1", "cam2"]
    assert (view.state, view.reason) == ("error", "cam2: camera failed: no device") and view.cameras[1].stale


def test_configured_camera_the_daemon_does_not_report_is_an_error():
    insp = Inspector(FollowConfig(endpoint="tcp://x:1", cameras=["cam1", "cam9"]))
    insp.on_event(health(STREAMING), 0.0)
    view = insp.view(0.0, tally())
    assert view.cameras[1].camera == "cam9" and view.cameras[1].reason == "camera not reported by the daemon"


def test_a_review_verdict_passes_through_the_real_subscriber_as_it_came():
    from wirepub import WirePublisher

    from edge.adapter.follow import open_subscriber

    with WirePublisher() as pub:
        cfg = FollowConfig(endpoint=pub.endpoint, cameras=["cam1"])
        insp = Inspector(cfg)
        with open_subscriber(cfg) as sub:
            pub.wait_for_subscribers(2)
            pub.health(0, cameras=[STREAMING])
            pub.frame("cam1", 0, verdict="review", score=0.4)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and insp.view(0.0, sub.tally()).cameras[0].last is None:
                insp.on_event(sub.receive(0.2), time.monotonic())
            view = insp.view(time.monotonic(), sub.tally())
    cam = view.cameras[0]
    assert cam.last is not None and cam.last.verdict == "review" and cam.defects == 0 and cam.frames == 1
