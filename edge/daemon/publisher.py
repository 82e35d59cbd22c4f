"""The publisher thread: owns the daemon's XPUB socket, sends every judged frame and the heartbeats.

Messages (see edge/wire.py and the README's wire section):
    [b"frame.<camera>", FrameHeader msgpack, mask bytes]   one per judged frame
        (, map bytes)                                       a fourth part only with publish.mask_kind = "both"
    [b"health.<daemon>", Health msgpack]                   every heartbeat_s, frames or not

Sends never block. A full in-process queue (publisher behind) or, in "drop-and-count" mode, a full
subscriber drops the message and counts it; each frame header carries `dropped`, the seq gap since the
previous frame of that camera actually sent, so every drop anywhere in the daemon reaches the subscriber.
XPUB (rather than PUB) lets the daemon see subscriptions, so `wait_for_subscriber_s` can hold capture
until someone listens: ZeroMQ drops what is sent before a subscriber has joined.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, NamedTuple

import msgspec
import zmq

from edge.daemon.config import PublishConfig
from edge.daemon.metrics import Metrics
from edge.daemon.sockets import open_bound
from edge.daemon.threads import Threaded
from edge.security import ServerHook
from edge.wire import FrameHeader, Health, frame_topic, health_topic

log = logging.getLogger("edge.publisher")
FRAME_PREFIX = b"frame."


class Outgoing(NamedTuple):
    header: FrameHeader  # publish_ns and dropped are filled in at send
    mask: bytes
    queued_at: float  # time.monotonic() when handed over, for the publish_wait stage
    map: bytes = b""  # the quantised map as a fourth part (publish.mask_kind = "both"); none when empty


class Publisher(Threaded):
    def __init__(
        self,
        ctx: zmq.Context,
        cfg: PublishConfig,
        daemon: str,
        health: Callable[[], Health],
        metrics: Metrics,
        secure: ServerHook | None = None,
    ):
        self.cfg = cfg
        self.health = health  # builds the heartbeat body (seq, time and drop totals are set here)
        self.metrics = metrics
        self.health_topic = health_topic(daemon)
        self.queue: queue.Queue[Outgoing] = queue.Queue(maxsize=cfg.queue_size)
        self.subscribed = threading.Event()  # a subscription that matches frame topics has arrived
        self.sent = 0
        self.queue_dropped = 0  # incremented by submit() (the inference thread) only
        self.hwm_dropped = 0  # incremented by the publisher thread only
        options = {zmq.XPUB_VERBOSE: 1}  # pass every subscribe up, not only the first per topic
        if cfg.sndbuf_bytes:
            options[zmq.SNDBUF] = cfg.sndbuf_bytes
        if cfg.on_full_subscriber == "drop-and-count":
            options[zmq.XPUB_NODROP] = 1  # a full subscriber makes send fail (EAGAIN) instead of silently skipping it
        # Bound here so that bind errors reach the caller; the thread owns it from start() on.
        self.sock, self.endpoints = open_bound(
            ctx, zmq.XPUB, list(cfg.endpoints), role="publish.endpoints", linger_ms=cfg.linger_ms, sndhwm=cfg.sndhwm, options=options, secure=secure
        )
        super().__init__("publisher", owned=[self.sock])  # closed by the thread: linger flushes what is queued

    @property
    def dropped(self) -> int:
        return self.queue_dropped + self.hwm_dropped

    # --- called from other threads ---------------------------------------------------------------------
    def submit(self, item: Outgoing) -> bool:
        try:
            self.queue.put_nowait(item)
            return True
        except queue.Full:
            self.queue_dropped += 1
            self.metrics.publish_dropped("queue")
            return False

    # stop(): send what is queued, a last heartbeat, then close (linger flushes to connected subscribers).

    # --- the thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        encoder = msgspec.msgpack.Encoder()  # once per socket: per-call setup costs time on the hot path
        topics: dict[str, bytes] = {}
        last_seq: dict[str, int] = {}
        beat, period = 0, self.cfg.heartbeat_s
        next_beat = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat(encoder, beat)
                    beat += 1
                    next_beat = next_beat + period if next_beat + period > now else now + period
                try:
                    item = self.queue.get(timeout=max(0.0, min(next_beat - now, 0.05)))
                except queue.Empty:
                    item = None
                if item is not None:
                    self._send_frame(encoder, topics, last_seq, item)
                elif self.stop_event.is_set():
                    break  # queue drained after stop
                self._read_subscriptions()
            self._heartbeat(encoder, beat)  # the final counts, so a subscriber sees how the run ended
        except Exception:
            log.exception("publisher thread failed")
            raise

    def _send_frame(self, encoder: msgspec.msgpack.Encoder, topics: dict, last_seq: dict, item: Outgoing) -> None:
        h = item.header
        topic = topics.get(h.camera) or topics.setdefault(h.camera, frame_topic(h.camera))
        previous = last_seq.get(h.camera, -1)
        publish_ns = time.time_ns()
        header = msgspec.structs.replace(h, publish_ns=publish_ns, dropped=h.seq - previous - 1)
        try:
            # copy only small frames; a big mask goes by reference (zero-copy) to the I/O thread
            parts = [topic, encoder.encode(header), item.mask] + ([item.map] if item.map else [])
            self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=max(len(item.mask), len(item.map)) < 65536)
        except zmq.Again:
            self.hwm_dropped += 1
            self.metrics.publish_dropped("hwm")
            return
        last_seq[h.camera] = h.seq
        self.sent += 1
        self.metrics.stage["publish_wait"].observe(time.monotonic() - item.queued_at)
        self.metrics.end_to_end(h.camera, (publish_ns - h.capture_ns) / 1e9)

    def _heartbeat(self, encoder: msgspec.msgpack.Encoder, beat: int) -> None:
        body = msgspec.structs.replace(self.health(), seq=beat, time_ns=time.time_ns(), publish_dropped=self.dropped)
        try:
            self.sock.send_multipart([self.health_topic, encoder.encode(body)], flags=zmq.NOBLOCK)
            self.metrics.heartbeats.inc()
        except zmq.Again:
            self.hwm_dropped += 1
            self.metrics.publish_dropped("hwm")

    def _read_subscriptions(self) -> None:
        while True:
            try:
                event = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event[:1] == b"\x01":
                topic = event[1:]
                if FRAME_PREFIX.startswith(topic) or topic.startswith(FRAME_PREFIX):
                    if not self.subscribed.is_set():
                        log.info("a subscriber joined (%r)", topic.decode(errors="replace"))
                    self.subscribed.set()
