"""The MQTT bridge: follow the daemon's stream, publish results and the inspector's state as JSON.

    ssae adapter mqtt configs/adapter/mqtt.toml

Topics (prefix from the config, e.g. "ssae/line1"):

    <prefix>/<camera>/result   one ResultMessage per frame received (result_qos, result_retain)
    <prefix>/state             StateMessage (state_qos, retained by default): on every change, with every
                               heartbeat (counters), after every (re)connect; the last will says
                               "unavailable" when the bridge dies, and the bridge says it when it stops

The state covers the inspector and each camera in one retained message, so that the broker's last will
replaces all of it at once: a camera can never be left showing "busy" by a dead bridge. States and their
rules are edge.adapter.follow's (ready / busy / error / unavailable). Every frame is accounted for:
each result carries `lost` (frames before it that never reached the bridge) and `dropped` (frames the
daemon dropped), the state carries the per-camera totals, and `bridge` counts the messages the broker
never got (edge.adapter.mqtt_link).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import msgspec

from edge.adapter.follow import Inspector, InspectorView, open_subscriber, part_id
from edge.adapter.mqtt_config import MqttBridgeConfig
from edge.adapter.mqtt_link import BrokerLink, LinkCounts
from edge.client.subscriber import BadMessage, FrameEvent, HealthEvent
from edge.wire import Region

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # of the bridge's JSON; fields are only ever added
RECEIVE_TIMEOUT_S = 0.05  # bounds how late a state change or a stop request is noticed
WATCHDOG_EVERY_S = 1.0


class ResultMessage(msgspec.Struct, frozen=True, kw_only=True):
    """<prefix>/<camera>/result. Non-finite floats (an unscored frame, no threshold) are JSON null."""

    schema_version: int = SCHEMA_VERSION
    daemon: str
    camera: str
    seq: int  # the daemon's per-camera sequence number
    capture_ns: int  # wall clock at grab (daemon's clock)
    publish_ns: int
    received_ns: int  # wall clock when the bridge received it
    verdict: str  # ok | defect | review | unknown
    score: float
    threshold: float
    model_id: str
    part_id: str  # the PLC's part id on a triggered frame (edge/adapter/handshake.py); "" on a free-running one
    recipe: str  # the recipe whose model judged the frame
    regions: list[Region]
    dropped: int  # frames the daemon dropped just before this one
    lost: int  # frames published before this one that never reached the bridge
    reason: str  # why "unknown"
    source: str


class CameraState(msgspec.Struct, frozen=True, kw_only=True):
    camera: str
    state: str
    reason: str
    frames: int
    defects: int
    lost: int
    dropped: int
    last_seq: int  # -1 before the first frame


class StateMessage(msgspec.Struct, frozen=True, kw_only=True):
    """<prefix>/state, retained: the inspector's state, per camera, and the bridge's own delivery counts."""

    schema_version: int = SCHEMA_VERSION
    state: str  # ready | busy | error | unavailable
    reason: str
    daemon: str = ""
    model_id: str = ""
    recipe: str = ""
    time_ns: int  # when the bridge published this
    heartbeat_ns: int = 0  # receipt of the daemon's latest heartbeat; 0 = none
    heartbeats_missed: int = 0
    cameras: list[CameraState] = []
    bridge: LinkCounts | None = None


def result_message(ev: FrameEvent, daemon: str) -> ResultMessage:
    h = ev.header
    return ResultMessage(
        daemon=daemon, camera=h.camera, seq=h.seq, capture_ns=h.capture_ns, publish_ns=h.publish_ns,
        received_ns=ev.received_ns, verdict=h.verdict, score=h.score, threshold=h.threshold, model_id=h.model_id,
        part_id=part_id(h), recipe=h.recipe, regions=h.regions, dropped=h.dropped,
        lost=ev.lost, reason=h.reason, source=h.source,
    )  # fmt: skip


def state_message(view: InspectorView, counts: LinkCounts) -> StateMessage:
    cameras = [
        CameraState(
            camera=c.camera, state=c.state, reason=c.reason, frames=c.frames, defects=c.defects, lost=c.lost,
            dropped=c.dropped, last_seq=c.last.seq if c.last is not None else -1,
        )
        for c in view.cameras
    ]  # fmt: skip
    return StateMessage(
        state=view.state, reason=view.reason, daemon=view.daemon, model_id=view.model_id, recipe=view.recipe,
        time_ns=time.time_ns(), heartbeat_ns=view.heartbeat_ns, heartbeats_missed=view.heartbeats_missed,
        cameras=cameras, bridge=counts,
    )  # fmt: skip


def run_mqtt_bridge(cfg: MqttBridgeConfig, stop: threading.Event, notify: Callable[[str], None] | None = None) -> int:
    """Bridge until `stop` is set; returns the exit code. `notify` receives sd_notify states."""
    notify = notify or (lambda state: None)
    p = cfg.publish
    state_topic = f"{p.topic_prefix}/state"
    encode = msgspec.json.Encoder().encode
    will = encode(StateMessage(state="unavailable", reason="bridge offline (last will)", time_ns=0))
    link = BrokerLink(cfg.broker, will_topic=state_topic, will_payload=will, will_qos=p.state_qos, will_retain=p.state_retain)
    subscriber = open_subscriber(cfg.daemon)  # after the link: a bad password or TLS file fails before any socket exists
    inspector = Inspector(cfg.daemon)
    with subscriber:
        link.start()
        log.info("mqtt bridge: following %s, broker %s:%d, topics %s/…", cfg.daemon.endpoint, cfg.broker.host, cfg.broker.port, p.topic_prefix)
        notify("READY=1")
        last_key: object = None
        connects_seen = 0
        next_watchdog_s = next_report_s = 0.0
        while not stop.is_set():
            ev = subscriber.receive(timeout_s=RECEIVE_TIMEOUT_S)
            now = time.monotonic()
            inspector.on_event(ev, now)
            if isinstance(ev, FrameEvent):
                result = encode(result_message(ev, inspector.daemon))
                link.publish(f"{p.topic_prefix}/{ev.header.camera}/result", result, p.result_qos, p.result_retain)
            elif isinstance(ev, BadMessage):
                log.warning("bad message on %s: %s", ev.topic, ev.error)
            link.sweep()
            view = inspector.view(now, subscriber.tally())
            counts = link.counts()
            key = (view.state, view.reason, [(c.camera, c.state, c.reason) for c in view.cameras])
            if key != last_key or isinstance(ev, HealthEvent) or counts.connects != connects_seen:
                if key != last_key:
                    (log.info if view.state in ("ready", "busy") else log.warning)("inspector %s%s", view.state, f": {view.reason}" if view.reason else "")
                link.publish(state_topic, encode(state_message(view, counts)), p.state_qos, p.state_retain)
                last_key, connects_seen = key, counts.connects
            if not link.is_alive():
                log.error("mqtt bridge: the MQTT network thread died (see above); exiting so that the service restarts")
                return 1
            if now >= next_watchdog_s:
                next_watchdog_s = now + WATCHDOG_EVERY_S
                notify("WATCHDOG=1")
            if now >= next_report_s:
                next_report_s = now + 60.0
                log.info("mqtt bridge: %s; broker %s; %s", view.state, counts, subscriber.tally())
        notify("STOPPING=1")
        inspector.stopping()
        final = state_message(inspector.view(time.monotonic(), subscriber.tally()), link.counts())
        counts = link.close((state_topic, encode(final), p.state_qos, p.state_retain))
    log.info("mqtt bridge stopped: broker %s", counts)
    return 0
