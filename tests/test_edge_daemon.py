"""A real daemon in this process, publishing over real ZeroMQ sockets on loopback to real subscribers."""

from __future__ import annotations

import math
import shutil
import threading
import time
import urllib.request

import cv2
import msgspec
import numpy as np
import pytest
import zmq

from edge.client.control import send_request
from edge.daemon.config import config_from_dict
from edge.daemon.daemon import Daemon
from edge.manifest import Calibration, read_manifest, write_manifest
from edge.wire import ApplyThresholds, FrameHeader, Health, Reload, Reply, Status

DECODER = msgspec.msgpack.Decoder(FrameHeader | Health)


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def subscribe(ctx, endpoint, topics=(b"",), **options):
    sock = ctx.socket(zmq.SUB)
    sock.linger = 0
    for option, value in options.items():
        sock.setsockopt(getattr(zmq, option.upper()), value)
    for topic in topics:
        sock.subscribe(topic)
    sock.connect(endpoint)
    return sock


def receive(sock, timeout_s=5.0):
    """(message, parts) or None after timeout_s."""
    if not sock.poll(int(timeout_s * 1000)):
        return None
    parts = sock.recv_multipart()
    return DECODER.decode(parts[1]), parts


def make_daemon(bundle, cameras, **top):
    raw = {"bundle": str(bundle), "cameras": cameras, "threads": 1, **top}
    raw.setdefault("publish", {})
    raw["publish"] = {"endpoints": ["tcp://127.0.0.1:*"], "heartbeat_s": 0.2, **raw["publish"]}
    return Daemon(config_from_dict(raw, origin="test"))


def run_in_thread(daemon):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", daemon.run()), name="test-daemon", daemon=True)
    thread.start()
    return thread, result


def write_images(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        assert cv2.imwrite(str(folder / name), image)
    return folder


def noise(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


class Stream:
    """Accounts a subscriber's frames per camera: every seq is received or reported dropped."""

    def __init__(self):
        self.frames: dict[str, list[FrameHeader]] = {}
        self.masks: dict[str, list[bytes]] = {}
        self.health: list[Health] = []
        self.lost = 0  # seqs neither received nor reported dropped

    def add(self, message, parts):
        if isinstance(message, Health):
            self.health.append(message)
            return
        got = self.frames.setdefault(message.camera, [])
        previous = got[-1].seq if got else -1
        self.lost += message.seq - previous - 1 - message.dropped
        got.append(message)
        self.masks.setdefault(message.camera, []).append(parts[2])

    def until(self, sub, predicate, timeout_s=10.0):
        """Receive (and account) until a message matches predicate; AssertionError after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (got := receive(sub, 0.5)) is not None:
                self.add(*got)
                if predicate(got[0]):
                    return got[0]
        raise AssertionError("the stream never showed the change")


def test_every_frame_accounted_for_across_cameras_until_the_daemon_exits(tiny_bundle, tmp_path, ctx):
    avi = tmp_path / "parts.avi"
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    for i in range(40):
        writer.write(noise((48, 64, 3), i))
    writer.release()
    folder = write_images(tmp_path / "imgs", {f"{i}.png": noise((32, 32, 3), 100 + i) for i in range(5)})
    (folder / "9-corrupt.png").write_bytes(b"garbage")
    daemon = make_daemon(
        tiny_bundle,
        [{"id": "video", "source": str(avi), "queue": "latest", "queue_size": 1}, {"id": "folder", "source": str(folder), "queue": "all"}],
        max_batch=4, publish={"wait_for_subscriber_s": 10}, archive={"dir": str(tmp_path / "archive"), "quota_mb": 5, "verdicts": ["unknown"]},
    )
    sub = subscribe(ctx, daemon.publisher.endpoints[0])
    thread, result = run_in_thread(daemon)
    stream = Stream()
    while thread.is_alive() or sub.poll(0):
        got = receive(sub, 0.5)
        if got:
            stream.add(*got)
    thread.join(10)
    assert result["code"] == 0
    final = stream.health[-1]
    assert all(c.state == "finished" for c in final.cameras)
    assert stream.lost == 0
    for cam in final.cameras:
        frames = stream.frames[cam.camera]
        assert frames[-1].seq == cam.frames_captured - 1  # the last frame is always published
        assert len(frames) + sum(f.dropped for f in frames) == cam.frames_captured
        assert cam.frames_judged == len(frames)
    video, folder_cam = ({c.camera: c for c in final.cameras}[k] for k in ("video", "folder"))
    assert video.frames_captured == 40 and folder_cam.frames_captured == 5 and folder_cam.skipped_files == 1
    assert [f.source for f in stream.frames["folder"]] == [f"{i}.png" for i in range(5)]
    # Uncalibrated bundle, no threshold: judged "unknown", but the score travels (for `calibrate live`).
    for f in stream.frames["folder"]:
        assert f.verdict == "unknown" and f.reason.startswith("uncalibrated") and math.isfinite(f.score) and f.score >= 0
        assert f.model_id == read_manifest(tiny_bundle).model_id and f.capture_ns <= f.publish_ns and f.mask.encoding == "none"
    assert set(stream.masks["folder"]) == {b""}
    archived = sorted(p.name for p in (tmp_path / "archive" / "folder").glob("*.json"))
    counts = daemon._archive_counts()  # a busy disk may skip (and count) video frames; none vanishes
    assert len(archived) == 5 and counts["written"] + counts["skipped"] == 5 + len(stream.frames["video"]) and counts["failed"] == 0


def test_wrong_size_or_channels_judged_unknown_with_reason(tiny_bundle, tmp_path, ctx):
    folder = write_images(tmp_path / "imgs", {
        "a-good.png": noise((32, 32, 3)),
        "b-big.png": noise((40, 48, 3)),
        "c-bgra.png": noise((32, 32, 4)),
        "d-gray.png": noise((32, 32)),
        "e-16bit.png": noise((32, 32, 3)).astype(np.uint16) * 256,
    })
    daemon = make_daemon(tiny_bundle, [{"id": "cam", "source": str(folder), "queue": "all", "resize": False}],
                         image_threshold=0.0, publish={"wait_for_subscriber_s": 10, "mask": "raw"})
    sub = subscribe(ctx, daemon.publisher.endpoints[0], topics=[b"frame."])
    thread, result = run_in_thread(daemon)
    stream = Stream()
    while thread.is_alive() or sub.poll(0):
        if got := receive(sub, 0.5):
            stream.add(*got)
    thread.join(10)
    assert result["code"] == 0 and stream.lost == 0
    by_name = {f.source: f for f in stream.frames["cam"]}
    assert [by_name[n].verdict for n in ("a-good.png", "d-gray.png")] == ["defect", "defect"]  # every score > 0
    assert "frame is 48x40, model expects 32x32 and resize is off" in by_name["b-big.png"].reason
    assert "4 channels" in by_name["c-bgra.png"].reason and "uint16" in by_name["e-16bit.png"].reason
    for name in ("b-big.png", "c-bgra.png", "e-16bit.png"):
        assert by_name[name].verdict == "unknown" and math.isnan(by_name[name].score) and by_name[name].mask.encoding == "none"
    good = by_name["a-good.png"]
    mask = np.frombuffer(stream.masks["cam"][0], np.uint8).reshape(good.mask.height_px, good.mask.width_px)
    assert good.mask.encoding == "raw" and (good.mask.roi_w, good.mask.roi_h) == (32, 32)
    assert mask.max() == 255 and sum(r.area_px for r in good.regions) <= int((mask > 0).sum())


def stall_setup(tiny_bundle, tmp_path, ctx, mode):
    folder = write_images(tmp_path / "imgs", {f"{i}.png": noise((32, 32, 3), i) for i in range(4)})
    daemon = make_daemon(
        tiny_bundle, [{"id": "cam", "source": str(folder), "loop": True, "pace_fps": 150}], image_threshold=1.0,
        publish={"sndhwm": 20, "sndbuf_bytes": 4096, "on_full_subscriber": mode, "wait_for_subscriber_s": 10},
    )
    endpoint = daemon.publisher.endpoints[0]
    stalled = subscribe(ctx, endpoint, topics=[b"frame."], rcvhwm=1, rcvbuf=4096)  # reads nothing for a while
    reader = subscribe(ctx, endpoint, topics=[b"frame.", b"health."])
    time.sleep(0.2)  # both subscriptions in place before capture starts
    return daemon, stalled, reader


def test_a_stalled_subscriber_loses_only_its_own_frames(tiny_bundle, tmp_path, ctx):
    daemon, stalled, reader = stall_setup(tiny_bundle, tmp_path, ctx, "drop-for-that-subscriber")
    thread, result = run_in_thread(daemon)
    stream = Stream()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(stream.frames.get("cam", [])) < 150:
        if got := receive(reader, 1.0):
            stream.add(*got)
    assert len(stream.frames["cam"]) >= 150, "the daemon kept publishing to the subscriber that reads"
    assert stream.lost == 0, "nothing lost for the subscriber that keeps up"
    stalled_stream = Stream()
    deadline = time.monotonic() + 1.5  # it reads again while the daemon still publishes: old backlog, a gap, new frames
    while time.monotonic() < deadline:
        if got := receive(stalled, 0.3):
            stalled_stream.add(*got)
    assert stalled_stream.lost > 0, "the stalled subscriber sees its loss as seq gaps"
    daemon.request_stop()
    thread.join(10)
    assert not thread.is_alive() and result["code"] == 0


def test_drop_and_count_mode_reports_every_hwm_drop_in_band(tiny_bundle, tmp_path, ctx):
    daemon, stalled, reader = stall_setup(tiny_bundle, tmp_path, ctx, "drop-and-count")
    thread, result = run_in_thread(daemon)
    stream, stalled_stream = Stream(), Stream()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and daemon.publisher.hwm_dropped < 30:
        if got := receive(reader, 0.5):
            stream.add(*got)
    assert daemon.publisher.hwm_dropped >= 30, "the stalled subscriber's full queue makes sends fail, counted"
    captured = [c.frames_captured for h in stream.health for c in h.cameras]
    assert captured[-1] > captured[0] and stream.health[-1].publish_dropped > 0, "capture went on; heartbeats report the drops"
    poller = zmq.Poller()
    poller.register(reader, zmq.POLLIN)
    poller.register(stalled, zmq.POLLIN)
    deadline = time.monotonic() + 1.5  # the stalled one reads again: frames flow to both
    while time.monotonic() < deadline:
        for sock, _ in poller.poll(300):
            message = sock.recv_multipart()
            (stream if sock is reader else stalled_stream).add(DECODER.decode(message[1]), message)
    daemon.request_stop()
    thread.join(10)
    assert not thread.is_alive() and result["code"] == 0
    assert stream.lost == 0, "every frame the reader missed was reported in a header's `dropped`"
    assert max(f.dropped for f in stream.frames["cam"]) > 0


def test_control_status_apply_reload_and_metrics(tiny_bundle, tmp_path, ctx):
    folder = write_images(tmp_path / "imgs", {f"{i}.png": noise((32, 32, 3), i) for i in range(3)})
    calibrated = tmp_path / "calibrated"
    shutil.copytree(tiny_bundle, calibrated)
    manifest = read_manifest(calibrated)
    write_manifest(calibrated, msgspec.structs.replace(manifest, calibration=Calibration(image_threshold=1e6, pixel_threshold=1e6, method="test")))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    with open(broken / "model.onnx", "r+b") as f:
        f.seek(64)
        f.write(b"\0\0\0\0")
    daemon = make_daemon(tiny_bundle, [{"id": "cam", "source": str(folder), "loop": True, "pace_fps": 60}],
                         control={"endpoint": "tcp://127.0.0.1:*"}, metrics={"port": 0}, publish={"wait_for_subscriber_s": 10})
    control = daemon.control.endpoints[0]
    sub = subscribe(ctx, daemon.publisher.endpoints[0], topics=[b"frame."])
    thread, result = run_in_thread(daemon)
    stream = Stream()

    def frames_until(predicate, timeout_s=10):
        return stream.until(sub, predicate, timeout_s)

    try:
        frames_until(lambda h: h.verdict == "unknown")
        status = send_request(control, Status(), timeout_s=5, ctx=ctx)
        assert status.ok and status.model_id == manifest.model_id and math.isnan(status.image_threshold)
        applied = send_request(control, ApplyThresholds(image_threshold=0.0), timeout_s=5, ctx=ctx)
        assert applied.ok and applied.image_threshold == 0.0
        frames_until(lambda h: h.verdict == "defect" and h.threshold == 0.0)
        reloaded = send_request(control, Reload(bundle=str(calibrated)), timeout_s=10, ctx=ctx)
        assert reloaded.ok and reloaded.image_threshold == 1e6, reloaded.message
        frames_until(lambda h: h.verdict == "ok" and h.threshold == 1e6)
        refused = send_request(control, Reload(bundle=str(broken)), timeout_s=10, ctx=ctx)
        assert not refused.ok and "sha256" in refused.message and refused.image_threshold == 1e6
        bad = ctx.socket(zmq.REQ)
        bad.linger = 0
        bad.connect(control)
        bad.send(b"\x93junk")
        assert bad.poll(5000)
        assert not msgspec.msgpack.decode(bad.recv(), type=Reply).ok
        bad.close()
        frames_until(lambda h: True)
        assert all(h.verdict == "ok" for h in stream.frames["cam"][-1:]), "the running model stayed after the refused reload"
        assert stream.lost == 0, "reloads never dropped the stream"
        port = daemon.metrics.server.server_address[1]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'ssae_frames_captured_total{camera="cam"}' in text and 'ssae_stage_seconds_bucket{le="0.001",stage="infer"}' in text
        assert 'ssae_reloads_total{result="failed"} 1.0' in text and 'ssae_camera_state{camera="cam",state="streaming"} 1.0' in text
        assert 'ssae_frames_judged_total{camera="cam",verdict="ok"}' in text and "ssae_archive" not in text
    finally:
        daemon.request_stop()
        thread.join(10)
    assert result["code"] == 0


def test_a_crop_outside_the_frame_fails_the_camera_in_the_heartbeat_with_one_warning(tiny_bundle, tmp_path, ctx, caplog):
    """Every frame is published (as unknown), but the heartbeat must not say "streaming": nothing is inspected."""
    folder = write_images(tmp_path / "imgs", {f"{i}.png": noise((40, 48, 3), i) for i in range(3)})
    daemon = make_daemon(tiny_bundle, [{"id": "cam", "source": str(folder), "loop": True, "pace_fps": 100, "crop": {"x": 30, "y": 0, "w": 32, "h": 32}}],
                         image_threshold=1.0, publish={"wait_for_subscriber_s": 10})
    sub = subscribe(ctx, daemon.publisher.endpoints[0])
    stream = Stream()
    with caplog.at_level("INFO"):
        thread, result = run_in_thread(daemon)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (len(stream.frames.get("cam", [])) >= 60 and len(stream.health) >= 3):
            if got := receive(sub, 0.5):
                stream.add(*got)
        daemon.request_stop()
        thread.join(10)
    assert result["code"] == 0 and len(stream.frames["cam"]) >= 60
    assert all(f.verdict == "unknown" and "crop 30,0,32x32 lies outside the 48x40 frame" in f.reason for f in stream.frames["cam"])
    later = [c for h in stream.health[1:] for c in h.cameras]
    assert later and all(c.state == "failed" and "crop 30,0,32x32 lies outside" in c.last_error for c in later)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "crop" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("camera cam: crop 30,0,32x32 lies outside the 48x40 frame"), warnings
