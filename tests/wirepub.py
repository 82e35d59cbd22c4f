"""Test helper: a real publisher of the wire (XPUB on a random loopback port) that tests drive by hand.

XPUB lets the test wait until the subscriber's subscription has arrived, so nothing sent is lost to
ZeroMQ's slow-joiner window and tests need no sleeps.
"""

from __future__ import annotations

import time

import msgspec
import zmq

from edge.wire import SCHEMA_VERSION, FrameHeader, Health, MaskInfo, Region, frame_topic, health_topic


class WirePublisher:
    def __init__(self, *, configure=None):
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.XPUB)
        self.sock.linger = 0
        self.sock.sndhwm = 10000
        if configure is not None:
            configure(self.sock)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.encoder = msgspec.msgpack.Encoder()
        self.subscriptions: set[bytes] = set()

    def wait_for_subscribers(self, topics: int = 1, timeout_s: float = 5.0) -> None:
        """Block until `topics` subscriptions arrived (one SUB subscribing to frame. and health. sends two)."""
        deadline = time.monotonic() + timeout_s
        while len(self.subscriptions) < topics:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not self.sock.poll(left_ms, zmq.POLLIN):
                raise TimeoutError(f"no subscriber within {timeout_s} s (have {self.subscriptions})")
            msg = self.sock.recv()
            if msg[:1] == b"\x01":
                self.subscriptions.add(msg[1:])

    def frame(self, camera="cam1", seq=0, *, dropped=0, verdict="ok", score=0.1, threshold=0.5, mask=b"", mask_info=None, regions=(), capture_ns=None, **fields):
        now = time.time_ns()
        header = FrameHeader(
            schema_version=SCHEMA_VERSION,
            camera=camera,
            seq=seq,
            capture_ns=capture_ns if capture_ns is not None else now - 2_000_000,
            publish_ns=now,
            score=score,
            threshold=threshold,
            verdict=verdict,
            model_id="m" * 64,
            regions=[Region(**r) for r in regions],
            dropped=dropped,
            mask=mask_info or MaskInfo(),
            **fields,  # later-schema fields: part_id, recipe, ...
        )
        self.sock.send_multipart([frame_topic(camera), self.encoder.encode(header), mask])
        return header

    def health(self, seq=0, *, daemon="d1", period_s=1.0, cameras=(), **fields):
        body = Health(
            schema_version=SCHEMA_VERSION,
            daemon=daemon,
            seq=seq,
            time_ns=time.time_ns(),
            period_s=period_s,
            uptime_s=float(seq) * period_s,
            backend="onnxruntime",
            model_id="m" * 64,
            image_threshold=0.5,
            cameras=list(cameras),
            **fields,
        )
        self.sock.send_multipart([health_topic(daemon), self.encoder.encode(body)])
        return body

    def raw(self, *parts: bytes) -> None:
        self.sock.send_multipart(list(parts))

    def close(self) -> None:
        self.sock.close(linger=0)
        self.context.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
