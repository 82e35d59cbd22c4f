"""Every long-lived daemon thread runs through edge/daemon/threads.py: named, stopped by its event, joined
with a timeout, and what it owns (ZeroMQ sockets, the archive folder's lock) released the same way,
whether the part ever started or not. Real sockets on loopback, a real archive folder."""

from __future__ import annotations

import threading

import zmq

from edge.daemon.archive import Archive
from edge.daemon.capture import Capture
from edge.daemon.config import ArchiveConfig, CameraConfig, ControlConfig, PublishConfig
from edge.daemon.control import ControlServer
from edge.daemon.handshakes import HandshakeLog
from edge.daemon.metrics import Metrics
from edge.daemon.publisher import Publisher
from edge.daemon.threads import Threaded
from edge.daemon.worker import InferenceWorker
from edge.wire import Health, Reply


def health() -> Health:
    return Health(schema_version=1, daemon="t", seq=0, time_ns=0, period_s=0.1, uptime_s=0.0, backend="none", model_id="m", image_threshold=0.0)


def parts(ctx, tmp_path, images):
    publisher = Publisher(ctx, PublishConfig(endpoints=["tcp://127.0.0.1:*"], heartbeat_s=0.1), "t", health, Metrics())
    control = ControlServer(ctx, ControlConfig(endpoint="tcp://127.0.0.1:*"), lambda request: Reply(ok=True))
    handshakes = HandshakeLog(ctx, [(publisher.sock, "publish.endpoints"), (control.sock, "control.endpoint")])
    archive = Archive(ArchiveConfig(dir=str(tmp_path / "archive"), quota_mb=1))
    capture = Capture(CameraConfig(id="cam", source=str(images)), threading.Event())
    return publisher, control, handshakes, archive, capture


def owned_sockets(part) -> list[zmq.Socket]:
    return [r for r in part.owned if isinstance(r, zmq.Socket)]


def test_parts_that_never_started_release_what_they_own_on_join(tmp_path):
    (tmp_path / "imgs").mkdir()
    with zmq.Context() as ctx:
        all_parts = parts(ctx, tmp_path, tmp_path / "imgs")
        assert all(isinstance(p, Threaded) for p in all_parts)
        for part in all_parts:
            assert part.join(0.1) and not part.done
        assert all(s.closed for p in all_parts for s in owned_sockets(p)) and any(owned_sockets(p) for p in all_parts)
        Archive(ArchiveConfig(dir=str(tmp_path / "archive"), quota_mb=1)).close()  # the folder's lock was released


def test_started_parts_stop_join_and_close_their_sockets_in_their_own_thread(tmp_path):
    (tmp_path / "imgs").mkdir()
    with zmq.Context() as ctx:
        all_parts = parts(ctx, tmp_path, tmp_path / "imgs")
        names = []
        for part in all_parts:
            part.start()
            names.append(part.thread.name)
        for part in all_parts:
            part.stop()
        for part in all_parts:
            assert part.join(5.0) and part.done, part.thread.name
        assert names == ["publisher", "control", "handshakes", "archive", "capture-cam"]
        assert all(s.closed for p in all_parts for s in owned_sockets(p))
        Archive(ArchiveConfig(dir=str(tmp_path / "archive"), quota_mb=1)).close()


def test_the_inference_worker_is_one_of_them():
    assert issubclass(InferenceWorker, Threaded)
