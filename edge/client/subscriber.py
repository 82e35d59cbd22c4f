"""The subscriber client: one SUB socket that reads the daemon's wire and accounts for every frame.

Adapters (the Modbus PLC adapter, `ssae calibrate live`, `ssae edge tap`) build on this class instead of
touching ZeroMQ themselves, so that loss detection is written once:

- frames: each camera's `seq` rises by one per captured frame, and a header's `dropped` counts the frames
  the daemon captured but did not publish since its previous message. So between two received frames
  of a camera, `seq - prev_seq - 1 - dropped` frames were published but never reached us (a full
  high-water mark, a network stall): `FrameEvent.lost`. The daemon's own drops are `header.dropped`.
- heartbeats: `health.<daemon>` arrives every `period_s` even when no frames flow. No heartbeat for
  `missed_heartbeats × period_s` (3 by default) yields one `HeartbeatLost`; the next heartbeat carries
  `resumed=True`. A subscriber that never hears one reports `HeartbeatLost(daemon="")` after
  `first_heartbeat_s`.

    with Subscriber("tcp://10.0.0.5:5555", masks=False) as sub:
        while running:
            match sub.receive(timeout_s=0.5):
                case FrameEvent(header=h, lost=n): ...
                case HealthEvent(health=h): ...
                case HeartbeatLost(): fail_safe()
                case BadMessage(error=e): log(e)
                case None: pass  # nothing within the timeout
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import msgspec
import numpy as np
import zmq

from edge.security import ClientHook
from edge.wire import FrameHeader, Health, MaskInfo

SocketHook = ClientHook  # runs before connect, e.g. edge.security.curve_client(...)


class FrameEvent(msgspec.Struct, frozen=True, kw_only=True):
    header: FrameHeader
    mask: bytes | None  # the mask frame as sent (see decode_mask); None when masks=False or encoding "none"
    received_ns: int  # wall clock (time.time_ns) at receipt; latency = received_ns - header.capture_ns
    lost: int = 0  # frames published but not received since this camera's previous frame
    first: bool = False  # first frame seen from this camera (nothing to compare seq with)
    restarted: bool = False  # seq went backwards: the daemon restarted; not counted as loss
    map: bytes | None = None  # the fourth part (publish.mask_kind = "both"), laid out as header.map says; None when absent or masks=False

    @property
    def latency_ms(self) -> float:
        """Capture -> receive; meaningful across hosts only with synchronised clocks (NTP/PTP)."""
        return (self.received_ns - self.header.capture_ns) / 1e6


class HealthEvent(msgspec.Struct, frozen=True, kw_only=True):
    health: Health
    received_ns: int
    missed: int = 0  # heartbeats skipped in health.seq since the previous one from this daemon
    resumed: bool = False  # first heartbeat after a HeartbeatLost
    restarted: bool = False  # health.seq went backwards: the daemon restarted


class HeartbeatLost(msgspec.Struct, frozen=True, kw_only=True):
    daemon: str  # "" when no heartbeat was ever received
    silent_s: float  # seconds since the last heartbeat (or since connecting)
    limit_s: float  # the silence allowed: missed_heartbeats x period_s (or first_heartbeat_s)


class BadMessage(msgspec.Struct, frozen=True, kw_only=True):
    topic: str
    error: str


Event = FrameEvent | HealthEvent | HeartbeatLost | BadMessage


class CameraTally(msgspec.Struct, frozen=True, kw_only=True):
    camera: str
    last_seq: int
    frames: int  # received
    lost: int  # published, not received
    dropped: int  # dropped by the daemon (sum of header.dropped)
    restarts: int


class Tally(msgspec.Struct, frozen=True, kw_only=True):
    cameras: list[CameraTally]
    heartbeats: int
    heartbeats_missed: int  # by gaps in health.seq
    heartbeat_losses: int  # HeartbeatLost events
    bad_messages: int

    @property
    def frames(self) -> int:
        return sum(c.frames for c in self.cameras)

    @property
    def lost(self) -> int:
        return sum(c.lost for c in self.cameras)

    @property
    def dropped(self) -> int:
        return sum(c.dropped for c in self.cameras)


class _Camera:
    """Running count for one camera (internal, owned by the Subscriber)."""

    __slots__ = ("last_seq", "frames", "lost", "dropped", "restarts")

    def __init__(self):
        self.last_seq, self.frames, self.lost, self.dropped, self.restarts = -1, 0, 0, 0, 0


class _Daemon:
    __slots__ = ("last_seq", "last_rx_s", "period_s", "down")

    def __init__(self):
        self.last_seq, self.last_rx_s, self.period_s, self.down = -1, 0.0, 1.0, False


class Subscriber:
    """One SUB socket connected to one or more daemons. Not thread-safe: use it from one thread."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        cameras: Sequence[str] | None = None,  # None: every camera
        frames: bool = True,
        health: bool = True,
        masks: bool = False,  # False: the mask frame is skipped without copying it
        missed_heartbeats: int = 3,
        first_heartbeat_s: float = 10.0,
        rcvhwm: int = 1000,
        configure: SocketHook | None = None,  # e.g. edge.security.curve_client(...); runs before connect
        context: zmq.Context | None = None,
    ):
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise ValueError("no endpoint given; pass e.g. tcp://127.0.0.1:5555")
        if not (frames or health):
            raise ValueError("subscribe to frames, health or both")
        self.endpoints = list(endpoints)
        self.masks = masks
        self.health = health
        self.missed_heartbeats = missed_heartbeats
        self.first_heartbeat_s = first_heartbeat_s
        # Prefix subscriptions match frame.cam1 for frame.cam10 too, so named cameras are also checked exactly.
        self._topics = None if cameras is None else {f"frame.{c}".encode() for c in cameras}
        self._decoder = msgspec.msgpack.Decoder(FrameHeader | Health)
        self._skip = bytearray(0)  # recv_into this discards a frame without copying it
        self._cameras: dict[str, _Camera] = {}
        self._daemons: dict[str, _Daemon] = {}
        self._heartbeats = self._missed = self._losses = self._bad = 0
        self._never_heard_reported = False
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._sock = self._context.socket(zmq.SUB)
        try:
            self._sock.linger = 0  # closing must never wait: a subscriber sends nothing worth keeping
            self._sock.rcvhwm = rcvhwm
            if configure is not None:
                configure(self._sock)
            if frames:
                for topic in sorted(self._topics) if self._topics else [b"frame."]:
                    self._sock.setsockopt(zmq.SUBSCRIBE, topic)
            if health:
                self._sock.setsockopt(zmq.SUBSCRIBE, b"health.")
            for endpoint in self.endpoints:
                self._sock.connect(endpoint)
        except zmq.ZMQError as e:
            self.close()
            raise ValueError(f"cannot connect to {', '.join(self.endpoints)}: {e}; use tcp://host:port") from e
        self._connected_s = time.monotonic()
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)

    # -- lifetime -------------------------------------------------------------------------------------
    def close(self) -> None:
        if not self._sock.closed:
            self._sock.close(linger=0)
        if self._own_context and not self._context.closed:
            self._context.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- receiving ------------------------------------------------------------------------------------
    def receive(self, timeout_s: float) -> Event | None:
        """The next event, or None when nothing arrived within timeout_s (heartbeat checks still run).

        Returns as soon as one event is ready; call it in a loop. A HeartbeatLost is returned at the
        moment the silence exceeds its limit, even while frames keep arriving.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            now = time.monotonic()
            overdue = self._heartbeat_overdue(now)
            if overdue is not None:
                return overdue
            wait_s = min(deadline, self._next_heartbeat_deadline()) - now
            if not self._poller.poll(max(0, int(wait_s * 1000 + 0.999))):
                if time.monotonic() >= deadline:
                    return None
                continue  # woke for a heartbeat deadline: check it
            event = self._read_message()
            if event is not None:
                return event

    def tally(self) -> Tally:
        return Tally(
            cameras=[
                CameraTally(camera=name, last_seq=c.last_seq, frames=c.frames, lost=c.lost, dropped=c.dropped, restarts=c.restarts)
                for name, c in sorted(self._cameras.items())
            ],
            heartbeats=self._heartbeats,
            heartbeats_missed=self._missed,
            heartbeat_losses=self._losses,
            bad_messages=self._bad,
        )

    def _read_message(self) -> Event | None:
        sock = self._sock
        topic = sock.recv()
        if not sock.rcvmore:
            self._bad += 1
            return BadMessage(topic=topic.decode(errors="replace"), error="message has one frame; expected topic + msgpack body")
        body = sock.recv()
        received_ns = time.time_ns()
        is_frame = topic.startswith(b"frame.")
        mask = amap = None
        if is_frame and sock.rcvmore and self.masks and (self._topics is None or topic in self._topics):
            mask = sock.recv()
            if sock.rcvmore:
                amap = sock.recv()  # schema 2, mask_kind "both": the quantised map beside the mask
        self._discard_rest()
        if is_frame and self._topics is not None and topic not in self._topics:
            return None  # a camera whose name merely starts with a subscribed one
        try:
            msg = self._decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            self._bad += 1
            return BadMessage(topic=topic.decode(errors="replace"), error=f"undecodable body: {e}")
        if isinstance(msg, FrameHeader):
            return self._on_frame(msg, mask or None, received_ns, amap or None)
        return self._on_health(msg, received_ns)

    def _discard_rest(self) -> None:
        while self._sock.rcvmore:
            self._sock.recv_into(self._skip)  # ZeroMQ truncates into the empty buffer: no copy

    def _on_frame(self, header: FrameHeader, mask: bytes | None, received_ns: int, amap: bytes | None = None) -> FrameEvent:
        cam = self._cameras.get(header.camera)
        if cam is None:
            cam = self._cameras[header.camera] = _Camera()
        first = cam.last_seq < 0
        restarted = not first and header.seq <= cam.last_seq
        lost = 0
        if not first and not restarted:
            # Frames between the two seqs were either dropped by the daemon (it says so) or lost on the way.
            lost = max(0, header.seq - cam.last_seq - 1 - header.dropped)
        cam.last_seq = header.seq
        cam.frames += 1
        cam.lost += lost
        cam.dropped += header.dropped
        cam.restarts += restarted
        return FrameEvent(header=header, mask=mask, received_ns=received_ns, lost=lost, first=first, restarted=restarted, map=amap)

    def _on_health(self, health: Health, received_ns: int) -> HealthEvent:
        d = self._daemons.get(health.daemon)
        if d is None:
            d = self._daemons[health.daemon] = _Daemon()
        restarted = 0 <= d.last_seq and health.seq <= d.last_seq
        missed = 0 if d.last_seq < 0 or restarted else max(0, health.seq - d.last_seq - 1)
        resumed = d.down
        d.last_seq, d.last_rx_s, d.down = health.seq, time.monotonic(), False
        d.period_s = health.period_s if health.period_s > 0 else d.period_s
        self._heartbeats += 1
        self._missed += missed
        return HealthEvent(health=health, received_ns=received_ns, missed=missed, resumed=resumed, restarted=restarted)

    # -- heartbeat watch ------------------------------------------------------------------------------
    def _limit_s(self, d: _Daemon) -> float:
        return self.missed_heartbeats * d.period_s

    def _next_heartbeat_deadline(self) -> float:
        if not self.health:
            return float("inf")
        live = [d.last_rx_s + self._limit_s(d) for d in self._daemons.values() if not d.down]
        if not self._daemons and not self._never_heard_reported:
            live.append(self._connected_s + self.first_heartbeat_s)
        return min(live, default=float("inf"))

    def _heartbeat_overdue(self, now: float) -> HeartbeatLost | None:
        if not self.health:
            return None
        if not self._daemons:
            silent = now - self._connected_s
            if not self._never_heard_reported and silent >= self.first_heartbeat_s:
                self._never_heard_reported = True
                self._losses += 1
                return HeartbeatLost(daemon="", silent_s=silent, limit_s=self.first_heartbeat_s)
            return None
        for name, d in self._daemons.items():
            silent = now - d.last_rx_s
            if not d.down and silent >= self._limit_s(d):
                d.down = True
                self._losses += 1
                return HeartbeatLost(daemon=name, silent_s=silent, limit_s=self._limit_s(d))
        return None


def decode_mask(info: MaskInfo, data: bytes | None) -> np.ndarray | None:
    """A mask or map frame as an array; None when the daemon sent none.

    info.kind "mask": uint8 (height_px, width_px), 0 or 255. info.kind "map" (schema 2): float32 (height_px,
    width_px) anomaly values, map_offset + code x map_scale (within map_scale / 2 of the daemon's map).
    """
    if info.encoding == "none" or not data:
        return None
    shape = (info.height_px, info.width_px)
    what = "map" if info.kind == "map" else "mask"
    if info.encoding == "raw":
        if len(data) != shape[0] * shape[1]:
            raise ValueError(f"raw {what} has {len(data)} bytes; header says {shape[1]}x{shape[0]} = {shape[0] * shape[1]}")
        codes = np.frombuffer(data, np.uint8).reshape(shape)
    elif info.encoding == "png":
        import cv2

        codes = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if codes is None or codes.shape != shape:
            got = "undecodable" if codes is None else f"{codes.shape[1]}x{codes.shape[0]}"
            raise ValueError(f"png {what} is {got}; header says {shape[1]}x{shape[0]}")
    else:
        raise ValueError(f"{what} encoding {info.encoding!r} is unknown to this subscriber; upgrade it")
    if info.kind != "map":
        return codes
    if not (math.isfinite(info.map_scale) and info.map_scale > 0):
        raise ValueError(f"map_scale = {info.map_scale!r} is not a positive number; the header is damaged or from a faulty publisher")
    return np.float32(info.map_offset) + codes.astype(np.float32) * np.float32(info.map_scale)


def evidence(event: FrameEvent) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(binary mask, anomaly map) of a frame received with masks=True, each None when it did not travel."""
    h = event.header
    first = decode_mask(h.mask, event.mask)
    if h.mask.kind == "map":
        return None, first
    return first, decode_mask(h.map, event.map)
