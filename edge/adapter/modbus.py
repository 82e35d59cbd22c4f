"""The reference PLC adapter: follow the daemon's stream, drive a reject gate over Modbus TCP.

    ssae adapter modbus configs/adapter/modbus.toml

The main thread reads the stream (edge.client.subscriber) and decides; the "plc-link" thread (edge.adapter.plc_link)
talks to the PLC. What the PLC sees (addresses from the config, see configs/adapter/modbus.toml):

- reject coil: a pulse of `pulse_ms` for every `defect` (and, by config, `review` and `unknown`) verdict, after
  `delay_ms` from capture or arrival, or after `offset_counts` of the encoder. Pulses are never lost
  when defects come faster than a pulse (edge.adapter.pulse: "extend" or "queue").
- unavailable coil: 1 while inspection cannot be trusted. It starts at 1 and drops to 0 only once a
  heartbeat arrived and every camera of the gate is streaming. It rises again when heartbeats stop
  (missed_heartbeats x period), when sequence numbers show frames or heartbeats lost on the way
  (held for recover_after_s of clean stream), when a camera is not streaming, and when the adapter
  stops. With `reject_all_when_unavailable` the reject coil is held on meanwhile.
- alive coil: toggles with every heartbeat. A PLC watchdog on it also catches a dead adapter.
- registers: last score and threshold (x score_scale; 65535 = not judged), defects since start
  (mod 65536), defects among the last N judged frames, and the reasons for "unavailable"
  (plc_link.STATUS_BITS).
- with [handshake] (edge.adapter.handshake): trigger / results-ready / acknowledge on one camera, whose
  untriggered frames then are no parts (they fire no reject), and the recipe the PLC selects. The
  requests go to the daemon's control endpoint on their own thread (edge.adapter.control_link).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable

from edge.adapter.config import AdapterConfig
from edge.adapter.control_link import ControlLink
from edge.adapter.handshake import DaemonRecipes, Handshake, TriggerResult
from edge.adapter.plc_link import STATUS_BITS, EncoderPulse, Outputs, PlcLink, TimedPulse
from edge.client.subscriber import BadMessage, FrameEvent, HealthEvent, HeartbeatLost, Subscriber
from edge.errors import UserError
from edge.security import client_secure
from edge.wire import FrameHeader, Health

log = logging.getLogger("edge.adapter_modbus")  # the name log lines carried before edge/adapter/ existed

NOT_JUDGED = 65535  # score register value for a frame without a score
RECEIVE_TIMEOUT_S = 0.05  # bounds how late a hold expiry or a stop request is noticed
WATCHDOG_EVERY_S = 1.0  # well inside any sensible WatchdogSec


class StreamHealth:
    """Whether the stream can be trusted, and why not: the fail-safe decision (main thread only)."""

    def __init__(self, cfg: AdapterConfig, now_s: float) -> None:
        self.cfg = cfg.daemon
        self.heartbeat_ok = False  # nothing heard yet: unavailable until proven otherwise
        self.gap_until_s = now_s  # lost frames: unavailable until then
        self.dropped_until_s = now_s
        self.overflow_until_s = now_s
        self.cameras_down: list[str] = []
        self.heartbeats = 0

    def on_health(self, ev: HealthEvent, now_s: float) -> None:
        self.heartbeat_ok = True
        self.heartbeats += 1
        if ev.missed:
            log.warning("%d heartbeat(s) of %s lost on the way; inspection unavailable", ev.missed, ev.health.daemon)
            self.gap_until_s = max(self.gap_until_s, now_s + self.cfg.recover_after_s)
        if ev.restarted:
            log.warning("daemon %s restarted (heartbeat seq went back to %d)", ev.health.daemon, ev.health.seq)
        if ev.resumed:
            log.info("heartbeats from %s resumed", ev.health.daemon)
        self.cameras_down = self._cameras_down(ev.health)

    def _cameras_down(self, health: Health) -> list[str]:
        if not self.cfg.require_streaming:
            return []
        states = {c.camera: c.state for c in health.cameras}
        watched = self.cfg.cameras or sorted(states)
        down = [f"{name}={states.get(name, 'not reported')}" for name in watched if states.get(name) != "streaming"]
        if not watched:
            down = ["(daemon reports no cameras)"]
        return down

    def on_frame(self, ev: FrameEvent, now_s: float) -> None:
        h = ev.header
        if ev.lost:
            log.warning("camera %s: %d frame(s) lost on the way before seq %d; inspection unavailable", h.camera, ev.lost, h.seq)
            self.gap_until_s = max(self.gap_until_s, now_s + self.cfg.recover_after_s)
        if h.dropped and self.cfg.on_dropped == "unavailable":
            self.dropped_until_s = max(self.dropped_until_s, now_s + self.cfg.recover_after_s)
        if ev.restarted:
            log.warning("camera %s: seq went back to %d (daemon restarted)", h.camera, h.seq)

    def on_heartbeat_lost(self, ev: HeartbeatLost) -> None:
        self.heartbeat_ok = False
        who = ev.daemon or "the daemon (none heard since start)"
        log.error("no heartbeat from %s for %.1f s (limit %.1f s); inspection unavailable", who, ev.silent_s, ev.limit_s)

    def on_overflow(self, now_s: float) -> None:
        self.overflow_until_s = now_s + self.cfg.recover_after_s

    def status(self, now_s: float) -> int:
        """STATUS_BITS of every current reason; 0 = inspection available."""
        bits = 0
        bits |= 0 if self.heartbeat_ok else STATUS_BITS["no_heartbeat"]
        bits |= STATUS_BITS["lost_frames"] if now_s < self.gap_until_s else 0
        bits |= STATUS_BITS["camera_down"] if self.cameras_down else 0
        bits |= STATUS_BITS["adapter_overflow"] if now_s < self.overflow_until_s else 0
        bits |= STATUS_BITS["daemon_dropped"] if now_s < self.dropped_until_s else 0
        return bits


def describe_status(bits: int) -> str:
    return ", ".join(name for name, bit in STATUS_BITS.items() if bits & bit) or "available"


def scale(value: float, factor: float) -> int:
    """A score as an unsigned 16-bit register: round(value x factor) clamped to 0..65534; NaN -> 65535."""
    if not math.isfinite(value):
        return NOT_JUDGED
    return max(0, min(NOT_JUDGED - 1, round(value * factor)))


class _Tally:
    """Verdict counts that feed the registers (main thread only)."""

    def __init__(self, window: int) -> None:
        self.defects_total = 0
        self.window: collections.deque[bool] = collections.deque(maxlen=window)
        self.window_defects = 0
        self.score: float = math.nan
        self.threshold: float = math.nan

    def add(self, h: FrameHeader, is_defect: bool) -> None:
        if len(self.window) == self.window.maxlen:
            self.window_defects -= self.window[0]
        self.window.append(is_defect)
        self.window_defects += is_defect
        self.defects_total += is_defect
        self.score, self.threshold = h.score, h.threshold


def _registers(cfg: AdapterConfig, tally: _Tally, status: int) -> dict[int, int]:
    o = cfg.outputs
    values = {
        o.score_register: scale(tally.score, o.score_scale),
        o.threshold_register: scale(tally.threshold, o.score_scale),
        o.defect_total_register: tally.defects_total % 65536,
        o.defect_window_register: min(tally.window_defects, 65535),
        o.status_register: status,
    }
    return {address: value for address, value in values.items() if address is not None}


def _reject_requests(cfg: AdapterConfig, ev: FrameEvent, now_s: float) -> list[TimedPulse | EncoderPulse]:
    """The reject pulses one frame asks for (none, one, or one per frame the daemon dropped)."""
    h = ev.header
    d = cfg.daemon
    n = int(h.verdict == "defect" or (h.verdict == "unknown" and d.reject_unknown) or (h.verdict == "review" and d.on_review == "reject"))
    if h.dropped and d.on_dropped == "reject":
        n += h.dropped  # uninspected parts passed: reject them too (timed like this frame)
    if not n:
        return []
    r = cfg.reject
    if r.encoder is not None:
        return [EncoderPulse(asked_s=now_s)] * n
    ref_ns = h.capture_ns if r.delay_from == "capture" else ev.received_ns
    # Wall-clock reference moved to this process' monotonic clock: immune to clock steps from here on.
    start_s = now_s + (ref_ns + r.delay_ms * 1e6 - time.time_ns()) / 1e9
    return [TimedPulse(start_s=start_s)] * n


def _is_part(cfg: AdapterConfig, h: FrameHeader) -> bool:
    """On the handshake's camera only triggered frames are parts; elsewhere (and free-running) every frame."""
    hs = cfg.handshake
    return hs is None or not hs.triggered or h.camera != hs.camera or h.trigger_id != 0


def run_modbus_adapter(cfg: AdapterConfig, stop: threading.Event, notify: Callable[[str], None] | None = None) -> int:
    """Follow the stream and drive the PLC until `stop` is set; returns the exit code.

    `notify` receives sd_notify states ("READY=1", "WATCHDOG=1", "STOPPING=1"); None = don't notify.
    """
    notify = notify or (lambda state: None)
    d = cfg.daemon
    try:
        subscriber = Subscriber(
            d.endpoint,
            cameras=d.cameras or None,
            masks=False,  # the gate needs verdicts only: masks are skipped without a copy
            missed_heartbeats=d.missed_heartbeats,
            first_heartbeat_s=d.first_heartbeat_s,
            configure=client_secure(d.security),
        )
    except ValueError as e:  # a malformed endpoint: the message says which and how to write it
        raise UserError(f"daemon.endpoint: {e}") from None
    hs_cfg = cfg.handshake
    control = ControlLink(d.control, hs_cfg.control_timeout_s, client_secure(d.security)) if hs_cfg else None
    handshake = Handshake(hs_cfg, lambda v: scale(v, cfg.outputs.score_scale), control.submit) if control and hs_cfg else None
    link = PlcLink(cfg.plc, cfg.reject, cfg.outputs, handshake, control.take if control else None)
    recipes: DaemonRecipes | None = None
    health = StreamHealth(cfg, time.monotonic())
    tally = _Tally(cfg.outputs.defect_window_frames)
    alive = False
    overflows = 0
    last: Outputs | None = None
    last_status = -1
    with subscriber, control or contextlib.nullcontext(), link:
        log.info("adapter: following %s, PLC %s:%d", d.endpoint, cfg.plc.host, cfg.plc.port)
        notify("READY=1")
        next_report_s = time.monotonic() + 60.0
        next_watchdog_s = 0.0
        while not stop.is_set():
            ev = subscriber.receive(timeout_s=RECEIVE_TIMEOUT_S)
            now = time.monotonic()
            match ev:
                case FrameEvent():
                    health.on_frame(ev, now)
                    h = ev.header
                    if h.trigger_id and handshake is not None and h.camera == handshake.cfg.camera:
                        link.submit(TriggerResult(h))
                    if _is_part(cfg, h):
                        if h.verdict != "unknown":
                            tally.add(h, h.verdict == "defect")
                        else:
                            tally.score, tally.threshold = math.nan, h.threshold
                        for request in _reject_requests(cfg, ev, now):
                            link.submit(request)
                case HealthEvent():
                    health.on_health(ev, now)
                    alive = not alive
                    if handshake is not None and recipes != (fresh := DaemonRecipes(ev.health.recipe, tuple(ev.health.recipes))):
                        recipes = fresh if link.submit(fresh) else recipes
                case HeartbeatLost():
                    health.on_heartbeat_lost(ev)
                case BadMessage():
                    log.warning("bad message on %s: %s", ev.topic, ev.error)
            if link.overflows != overflows:
                log.error("PLC queue full: %d command(s) refused; inspection unavailable", link.overflows - overflows)
                overflows = link.overflows
                health.on_overflow(now)
            status = health.status(now)
            outputs = Outputs(
                unavailable=status != 0,
                alive=alive,
                reject_hold=status != 0 and cfg.reject.reject_all_when_unavailable,
                registers=_registers(cfg, tally, status),
            )
            if status != last_status:
                detail = f" ({', '.join(health.cameras_down)})" if status & STATUS_BITS["camera_down"] else ""
                (log.warning if status else log.info)("inspection %s%s", "unavailable: " + describe_status(status) if status else "available", detail)
                last_status = status
            if outputs != last:
                if link.submit(outputs):
                    last = outputs
            if not link.is_alive():
                log.error("adapter: the PLC thread died (see above); exiting so that the service restarts")
                return 1
            if now >= next_watchdog_s:  # systemd's watchdog: this loop and the PLC thread are both alive
                next_watchdog_s = now + WATCHDOG_EVERY_S
                notify("WATCHDOG=1")
            if now >= next_report_s:
                next_report_s = now + 60.0
                log.info("adapter: %s; PLC %s; %s", describe_status(status), link.stats(), subscriber.tally())
        notify("STOPPING=1")
    log.info("adapter stopped: PLC %s", link.stats())
    return 0
