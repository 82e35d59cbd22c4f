"""Capture from real sources: an MJPG .avi written by OpenCV, image folders, a missing or corrupt file, a
network stream that never delivers; queue policies account for every frame."""

from __future__ import annotations

import queue
import socket
import threading
import time

import cv2
import numpy as np
import pytest

from edge.daemon.capture import Capture, redact
from edge.daemon.config import CameraConfig

FAST = dict(backoff_initial_s=0.05, backoff_max_s=0.2)


def write_avi(path, n, size=(32, 32)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, size)
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((size[1], size[0], 3), (i * 7) % 256, np.uint8))
    writer.release()
    return path


def write_images(folder, n, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        cv2.imwrite(str(folder / f"img{i:03d}.png"), np.full((32, 32, 3), i, np.uint8))
    return folder


def wait_for(predicate, timeout_s=10.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def consume(capture, timeout_s=10.0, delay_s=0.0):
    """Read frames until the capture has ended and its queue is empty."""
    frames = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            frames.append(capture.queue.get(timeout=0.05))
            time.sleep(delay_s)
        except queue.Empty:
            if capture.done and capture.queue.empty():
                return frames
    raise AssertionError(f"capture did not finish; state {capture.stats.snapshot()}")


def test_video_file_every_frame_numbered_and_stamped(tmp_path):
    avi = write_avi(tmp_path / "parts.avi", 12)
    cap = Capture(CameraConfig(id="cam", source=str(avi), queue="all", queue_size=4), threading.Event())
    cap.start()
    frames = consume(cap)
    assert [f.seq for f in frames] == list(range(12))
    assert [f.source for f in frames] == [f"{avi}#{i}" for i in range(12)]
    assert all(f.image.shape == (32, 32, 3) and f.image.dtype == np.uint8 for f in frames)
    stamps = [f.capture_ns for f in frames]
    assert stamps == sorted(stamps) and abs(stamps[0] - time.time_ns()) < 30e9
    health = cap.stats.snapshot()
    assert (health.state, health.frames_captured, health.frames_dropped, health.reconnects) == ("finished", 12, 0, 0)


def test_folder_skips_and_counts_unreadable_files(tmp_path):
    folder = write_images(tmp_path / "imgs", 3)
    (folder / "img001b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "notes.txt").write_text("not an image, not counted")
    cap = Capture(CameraConfig(id="cam", source=str(folder), queue="all"), threading.Event())
    cap.start()
    frames = consume(cap)
    assert [f.source for f in frames] == ["img000.png", "img001.png", "img002.png"]
    assert [f.seq for f in frames] == [0, 1, 2]  # a skipped file is not a frame: no seq, no gap
    health = cap.stats.snapshot()
    assert health.skipped_files == 1 and health.state == "finished" and "img001b.png" in health.last_error


def _corrupt_avi(tmp_path):
    avi = tmp_path / "corrupt.avi"
    avi.write_bytes(b"RIFF\x00\x10\x00\x00AVI LIST" + np.random.default_rng(0).bytes(4000))
    return avi


def _unreadable_folder(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder


@pytest.mark.parametrize(
    "make, loop, why",
    [
        (lambda p: p / "missing.avi", False, "no such file or folder"),
        (_corrupt_avi, False, "OpenCV"),
        (_corrupt_avi, True, "OpenCV"),
        (lambda p: (p / "empty").mkdir() or p / "empty", False, "no images"),
        (_unreadable_folder, True, "no readable image (1 unreadable file(s) skipped)"),
    ],
    ids=["missing", "corrupt", "corrupt-looping", "empty-folder", "unreadable-folder-looping"],
)
def test_a_file_or_folder_that_cannot_be_read_fails_the_camera_at_once(tmp_path, caplog, make, loop, why):
    """Retrying cannot heal a missing path or a corrupt file: the camera is failed with the reason, logged once."""
    source = make(tmp_path)
    cap = Capture(CameraConfig(id="cam", source=str(source), loop=loop, **FAST), threading.Event())
    with caplog.at_level("WARNING", logger="edge.capture"):
        cap.start()
        wait_for(lambda: cap.done, timeout_s=5, what="the capture to give up")
    health = cap.stats.snapshot()
    assert health.state == "failed" and why in health.last_error and health.reconnects == 0, health
    errors = [r.getMessage() for r in caplog.records if not r.getMessage().startswith("camera cam: skipped")]  # each unreadable file is named once
    assert len(errors) == 1 and why in errors[0] and "failed" in errors[0] and "retrying" not in errors[0], errors


def test_a_missing_live_source_keeps_reconnecting_with_backoff(caplog):
    """A camera on the network may come back: it is retried (with backoff), and the log says so once a minute."""
    cap = Capture(CameraConfig(id="cam", source="rtsp://127.0.0.1:1/none", open_timeout_s=0.2, **FAST), threading.Event())
    with caplog.at_level("WARNING", logger="edge.capture"):
        cap.start()
        wait_for(lambda: cap.stats.snapshot().reconnects >= 3, what="three reconnects")
        cap.stop()
        assert cap.join(5)
    assert cap.stats.snapshot().state == "finished"  # stopped, not failed
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "retrying" in lines[0] and "repeated" in lines[1], lines  # first one, then the count at stop


def test_looping_folder_keeps_numbering(tmp_path):
    folder = write_images(tmp_path / "imgs", 2)
    cap = Capture(CameraConfig(id="cam", source=str(folder), queue="all", loop=True), threading.Event())
    cap.start()
    got = [cap.queue.get(timeout=5) for _ in range(5)]
    cap.stop()
    assert cap.join(5)
    assert [f.seq for f in got] == [0, 1, 2, 3, 4]
    assert [f.source for f in got] == ["img000.png", "img001.png"] * 2 + ["img000.png"]


def test_latest_policy_drops_oldest_and_counts(tmp_path):
    avi = write_avi(tmp_path / "parts.avi", 30)
    cap = Capture(CameraConfig(id="cam", source=str(avi), queue="latest", queue_size=2), threading.Event())
    cap.start()  # nobody reads until the file has ended
    wait_for(lambda: cap.done, what="end of file")
    frames = consume(cap)
    assert [f.seq for f in frames] == [28, 29]  # the freshest survive
    health = cap.stats.snapshot()
    assert health.frames_captured == 30 and health.frames_dropped == 28  # 2 delivered + 28 dropped = every seq


def test_all_policy_waits_instead_of_dropping(tmp_path):
    avi = write_avi(tmp_path / "parts.avi", 30)
    cap = Capture(CameraConfig(id="cam", source=str(avi), queue="all", queue_size=2), threading.Event())
    cap.start()
    frames = consume(cap, delay_s=0.002)  # a consumer slower than the file
    assert [f.seq for f in frames] == list(range(30))
    assert cap.stats.snapshot().frames_dropped == 0


def test_all_policy_blocked_capture_aborts_without_deadlock(tmp_path):
    avi = write_avi(tmp_path / "parts.avi", 30)
    cap = Capture(CameraConfig(id="cam", source=str(avi), queue="all", queue_size=2), threading.Event())
    cap.start()
    wait_for(lambda: cap.queue.full(), what="a full queue")
    time.sleep(0.1)
    cap.stop()  # a stop alone lets the frame in hand wait for room (the daemon's drain)...
    assert not cap.join(0.3)
    cap.abort()  # ...an abort gives it up, counted
    assert cap.join(2)
    health = cap.stats.snapshot()
    assert health.frames_captured == 3 and health.frames_dropped == 1 and cap.queue.qsize() == 2


def test_stalled_network_stream_is_abandoned_and_retried():
    """An HTTP server that accepts and then says nothing: OpenCV's read could wait forever; the watchdog must not."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # keep it open, send nothing
            except OSError:
                continue

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    cfg = CameraConfig(id="net", source=f"http://user:pw@127.0.0.1:{port}/stream.mjpg", open_timeout_s=0.5, read_timeout_s=0.5, stale_after_s=0.5, **FAST)
    cap = Capture(cfg, threading.Event())
    try:
        cap.start()
        wait_for(lambda: cap.stats.snapshot().reconnects >= 2, timeout_s=20, what="two reconnects")
        health = cap.stats.snapshot()
        assert health.state in ("reconnecting", "starting") and health.frames_captured == 0
        assert "pw" not in health.last_error and "***@127.0.0.1" in health.last_error
    finally:
        cap.stop()
        assert cap.join(5), "a hung stream must not hold up the stop"
        stop.set()
        acceptor.join(2)
        for conn in held:
            conn.close()
        server.close()


def test_stream_that_stalls_after_frames_is_dropped_by_the_watchdog():
    """An MJPEG-over-HTTP camera that sends three frames per connection, then hangs. OpenCV's own read timeout
    is set far out (60 s), so only the capture's stale-frame watchdog can notice and reconnect."""
    ok, jpeg = cv2.imencode(".jpg", np.full((32, 32, 3), 128, np.uint8))
    part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(jpeg), jpeg.tobytes())
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    held, stop = [], threading.Event()

    def serve():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn = server.accept()[0]
            except OSError:
                continue
            held.append(conn)
            conn.recv(4096)  # the request
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n" + part * 3)

    server_thread = threading.Thread(target=serve, daemon=True)
    server_thread.start()
    cfg = CameraConfig(id="net", source=f"http://127.0.0.1:{port}/video.mjpg", open_timeout_s=5, read_timeout_s=60, stale_after_s=0.5, **FAST)
    cap = Capture(cfg, threading.Event())
    try:
        cap.start()
        wait_for(lambda: cap.stats.snapshot().reconnects >= 1 and cap.stats.snapshot().frames_captured >= 1, timeout_s=20, what="frames, then a reconnect")
        health = cap.stats.snapshot()
        assert "stale stream" in health.last_error
        frames = [cap.queue.get_nowait() for _ in range(cap.queue.qsize())]
        assert all(f.image.shape == (32, 32, 3) for f in frames)
    finally:
        cap.stop()
        assert cap.join(5), "a hung stream must not hold up the stop"
        stop.set()
        server_thread.join(2)
        for conn in held:
            conn.close()
        server.close()


@pytest.mark.parametrize("url, shown", [("rtsp://admin:secret@10.0.0.2/s", "rtsp://***@10.0.0.2/s"), ("/data/a@b.avi", "/data/a@b.avi")])
def test_credentials_never_shown(url, shown):
    assert redact(url) == shown
