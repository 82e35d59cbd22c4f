"""The subscriber library against a real XPUB socket on loopback: decoding, mask skipping, loss accounting."""

from __future__ import annotations

import time

import cv2
import msgspec
import numpy as np
import pytest
import zmq
from wirepub import WirePublisher

from edge.client.subscriber import BadMessage, FrameEvent, HealthEvent, HeartbeatLost, Subscriber, decode_mask
from edge.security import create_key_pair, curve_client, load_key_pair
from edge.wire import CameraHealth, MaskInfo


def next_event(sub, kind=None, timeout_s=3.0):
    """The next event (of a kind), failing instead of hanging."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        event = sub.receive(timeout_s=0.2)
        if event is not None and (kind is None or isinstance(event, kind)):
            return event
    raise AssertionError(f"no {kind.__name__ if kind else 'event'} within {timeout_s} s")


@pytest.fixture
def pub():
    with WirePublisher() as p:
        yield p


def test_frames_and_health_decode_with_masks_skipped(pub):
    with Subscriber(pub.endpoint, masks=False) as sub:
        pub.wait_for_subscribers(2)
        mask = np.zeros((8, 8), np.uint8)
        mask[2:4, 3:6] = 255
        sent = pub.frame("cam1", 0, verdict="defect", score=0.9, mask=mask.tobytes(), mask_info=MaskInfo(encoding="raw", height_px=8, width_px=8),
                         regions=[dict(x=3, y=2, w=3, h=2, area_px=6, peak_score=0.9)])
        pub.health(0, cameras=[CameraHealth(camera="cam1", state="streaming", fps=10.0)])
        frame = next_event(sub)
        assert isinstance(frame, FrameEvent)
        same = msgspec.msgpack.encode(frame.header) == msgspec.msgpack.encode(sent)  # bytes: NaN fields (no band) never compare equal
        assert same and frame.mask is None and frame.first and frame.lost == 0
        assert 0 < frame.latency_ms < 10_000
        health = next_event(sub)
        assert isinstance(health, HealthEvent) and health.health.cameras[0].state == "streaming"
        tally = sub.tally()
        assert tally.frames == 1 and tally.heartbeats == 1 and tally.lost == 0


def test_masks_received_and_decoded_raw_and_png(pub):
    mask = np.zeros((6, 10), np.uint8)
    mask[1:3, 4:9] = 255
    ok, png = cv2.imencode(".png", mask)
    with Subscriber(pub.endpoint, masks=True, health=False) as sub:
        pub.wait_for_subscribers(1)
        pub.frame("cam1", 0, mask=mask.tobytes(), mask_info=MaskInfo(encoding="raw", height_px=6, width_px=10))
        pub.frame("cam1", 1, mask=png.tobytes(), mask_info=MaskInfo(encoding="png", height_px=6, width_px=10))
        pub.frame("cam1", 2)  # no mask at all
        raw_event, png_event, none_event = (next_event(sub, FrameEvent) for _ in range(3))
    np.testing.assert_array_equal(decode_mask(raw_event.header.mask, raw_event.mask), mask)
    np.testing.assert_array_equal(decode_mask(png_event.header.mask, png_event.mask), mask)
    assert none_event.mask is None and decode_mask(none_event.header.mask, none_event.mask) is None
    with pytest.raises(ValueError, match="header says 10x6"):
        decode_mask(MaskInfo(encoding="raw", height_px=6, width_px=10), b"\x00" * 7)


def test_sequence_gaps_separate_daemon_drops_from_network_loss(pub):
    with Subscriber(pub.endpoint, health=False) as sub:
        pub.wait_for_subscribers(1)
        pub.frame("cam1", 0)
        pub.frame("cam1", 1)
        pub.frame("cam1", 4, dropped=2)  # seq 2, 3 dropped by the daemon and said so: no loss
        pub.frame("cam1", 8, dropped=1)  # 5, 6, 7 missing, one of them reported: two lost
        pub.frame("cam2", 17)  # another camera's first frame: nothing to compare with
        pub.frame("cam1", 0)  # seq went back: the daemon restarted
        events = [next_event(sub, FrameEvent) for _ in range(6)]
        assert [e.lost for e in events] == [0, 0, 0, 2, 0, 0]
        assert [e.first for e in events] == [True, False, False, False, True, False]
        assert events[-1].restarted
        tally = {c.camera: c for c in sub.tally().cameras}
    assert (tally["cam1"].frames, tally["cam1"].lost, tally["cam1"].dropped, tally["cam1"].restarts) == (5, 2, 3, 1)
    assert (tally["cam2"].frames, tally["cam2"].last_seq) == (1, 17)


def test_named_cameras_only_exact_topics(pub):
    with Subscriber(pub.endpoint, cameras=["cam1"], health=False) as sub:
        pub.wait_for_subscribers(1)
        pub.frame("cam10", 0)  # shares the prefix frame.cam1
        pub.frame("cam1", 0)
        event = next_event(sub, FrameEvent)
        assert event.header.camera == "cam1"
        assert sub.receive(timeout_s=0.1) is None


def test_heartbeat_loss_and_resume(pub):
    with Subscriber(pub.endpoint, frames=False) as sub:
        pub.wait_for_subscribers(1)
        pub.health(0, period_s=0.05)
        assert isinstance(next_event(sub), HealthEvent)
        started = time.monotonic()
        lost = next_event(sub, timeout_s=2.0)
        assert isinstance(lost, HeartbeatLost) and lost.daemon == "d1"
        assert lost.limit_s == pytest.approx(0.15) and lost.silent_s >= 0.15
        assert time.monotonic() - started < 1.0
        assert sub.receive(timeout_s=0.2) is None  # reported once, not on every call
        pub.health(5, period_s=0.05)  # 1..4 never arrived
        back = next_event(sub)
        assert isinstance(back, HealthEvent) and back.resumed and back.missed == 4
        tally = sub.tally()
        assert (tally.heartbeats, tally.heartbeats_missed, tally.heartbeat_losses) == (2, 4, 1)


def test_heartbeat_lost_while_frames_flow(pub):
    with Subscriber(pub.endpoint) as sub:
        pub.wait_for_subscribers(2)
        pub.health(0, period_s=0.05)
        assert isinstance(next_event(sub), HealthEvent)
        seen_lost = False
        deadline = time.monotonic() + 2.0
        seq = 0
        while not seen_lost and time.monotonic() < deadline:
            pub.frame("cam1", seq)
            seq += 1
            seen_lost = isinstance(sub.receive(timeout_s=0.02), HeartbeatLost)
        assert seen_lost


def test_no_heartbeat_ever(pub):
    with Subscriber(pub.endpoint, first_heartbeat_s=0.1) as sub:
        lost = next_event(sub, timeout_s=2.0)
        assert isinstance(lost, HeartbeatLost) and lost.daemon == ""


def test_bad_messages_reported_and_stream_continues(pub):
    with Subscriber(pub.endpoint, health=False) as sub:
        pub.wait_for_subscribers(1)
        pub.raw(b"frame.cam1", b"\xc1not msgpack", b"")
        pub.raw(b"frame.cam1")
        pub.frame("cam1", 0)
        first, second, good = (next_event(sub) for _ in range(3))
        assert isinstance(first, BadMessage) and "undecodable" in first.error
        assert isinstance(second, BadMessage) and "one frame" in second.error
        assert isinstance(good, FrameEvent)
        assert sub.tally().bad_messages == 2


def test_receive_timeout_returns_none_promptly(pub):
    with Subscriber(pub.endpoint, health=False) as sub:
        started = time.monotonic()
        assert sub.receive(timeout_s=0.1) is None
        assert 0.09 <= time.monotonic() - started < 1.0


def test_curve_hook_allows_the_right_server_key_only(tmp_path):
    if not zmq.has("curve"):
        pytest.skip("libzmq built without CURVE")
    server_files = create_key_pair(tmp_path, "daemon")
    client_files = create_key_pair(tmp_path, "client")
    wrong_files = create_key_pair(tmp_path, "other")
    server_keys = load_key_pair(server_files.secret)

    def server(sock):
        sock.curve_server = True
        sock.curve_secretkey = server_keys.secret

    with WirePublisher(configure=server) as pub:
        with Subscriber(pub.endpoint, health=False, configure=curve_client(client_files.secret, server_files.public)) as sub:
            pub.wait_for_subscribers(1)
            pub.frame("cam1", 0)
            assert isinstance(next_event(sub), FrameEvent)
        with Subscriber(pub.endpoint, health=False, configure=curve_client(client_files.secret, wrong_files.public)) as sub:
            for seq in range(1, 6):  # the handshake fails, so nothing ever arrives
                pub.frame("cam1", seq)
                assert sub.receive(timeout_s=0.1) is None


def test_bad_endpoint_is_a_clear_error():
    with pytest.raises(ValueError, match="tcp://host:port"):
        Subscriber("not-an-endpoint")
