"""The MQTT bridge's link to the broker: one paho-mqtt client (2.x API) and an account of every message.

paho's network thread connects, reconnects with backoff (reconnect_min_s doubling to reconnect_max_s)
and, on every connect, hands the broker our last will: "<prefix>/state" = unavailable, retained, which
the broker publishes if the bridge dies or its link times out (1.5 x keepalive_s).

Every publish ends in exactly one of three counters, so the state message can say what was lost:

    delivered    QoS 0: written to the socket; QoS 1/2: acknowledged by the broker
    undelivered  QoS 0 while the broker is away, or lost in a socket that broke; a full queue (queue_size);
                 a broker that refused it (MQTT 5 reason code); still pending when the bridge stopped
    pending      QoS 1/2 kept for the broker's return (resent then), or not yet acknowledged

Owned by the bridge's main thread; paho's callbacks only touch the counters guarded by `_lock`.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from pathlib import Path

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from edge.adapter.mqtt_config import BrokerConfig
from edge.errors import UserError

log = logging.getLogger(__name__)


class LinkCounts(msgspec.Struct, frozen=True, kw_only=True):
    published: int  # messages handed to the link
    delivered: int
    undelivered: int
    pending: int
    connects: int  # successful connects (1 + reconnects)
    connected: bool


def _password(cfg: BrokerConfig) -> str | None:
    if not cfg.password_file:
        return None
    try:
        lines = Path(cfg.password_file).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"broker.password_file = {cfg.password_file!r}: no such file; write the password into it (mode 0600)") from None
    if not lines or not lines[0]:
        raise UserError(f"broker.password_file = {cfg.password_file!r} is empty; put the password on its first line")
    return lines[0]


def _tls(client: paho.Client, cfg: BrokerConfig) -> None:
    tls = cfg.tls
    if tls is None:
        return
    for key in ("ca_file", "cert_file", "key_file"):
        value = getattr(tls, key)
        if value and not Path(value).is_file():
            raise UserError(f"broker.tls.{key} = {value!r}: no such file; point it to the PEM file")
    try:
        client.tls_set(ca_certs=tls.ca_file or None, certfile=tls.cert_file or None, keyfile=tls.key_file or None, cert_reqs=ssl.CERT_REQUIRED)
    except (ssl.SSLError, ValueError) as e:
        raise UserError(f"broker.tls: cannot use these files ({e}); check that they are PEM and that the key fits the certificate") from None


class BrokerLink:
    """The paho client with its network thread. start(), publish(), sweep(), counts(), close(final)."""

    def __init__(self, cfg: BrokerConfig, *, will_topic: str, will_payload: bytes, will_qos: int, will_retain: bool) -> None:
        self.cfg = cfg
        v5 = cfg.protocol == "5"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
        )
        c = self._client
        if cfg.username:
            c.username_pw_set(cfg.username, _password(cfg))
        _tls(c, cfg)
        c.will_set(will_topic, will_payload, qos=will_qos, retain=will_retain)
        c.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        c.max_queued_messages_set(cfg.queue_size)
        c.on_connect, c.on_disconnect, c.on_publish = self._on_connect, self._on_disconnect, self._on_publish
        self._lock = threading.Lock()
        self._connects = 0
        self._connected = False
        self._closing = False  # set by close(): our own disconnect is not worth a warning
        self._done: dict[int, bool] = {}  # mid -> refused, from on_publish (paho's thread), taken by sweep()
        self._pending: dict[int, paho.MQTTMessageInfo] = {}  # mid -> info, in publish order (main thread)
        self._scanned_connects = 0  # QoS 0 messages lost in a broken socket are found at the next connect
        self._published = self._delivered = self._undelivered = 0  # main thread only

    # -- paho's network thread ------------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%d refused the connection: %s; check broker.username/password_file and the broker's ACL", self.cfg.host, self.cfg.port, reason_code)
            return
        with self._lock:
            self._connects += 1
            self._connected = True
        log.info("broker %s:%d connected", self.cfg.host, self.cfg.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            was, self._connected = self._connected, False
        if was and not self._closing:
            log.warning("broker %s:%d lost (%s); reconnecting from %.1f s up to %.1f s apart", self.cfg.host, self.cfg.port, reason_code, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # QoS 0: written to the socket; QoS 1/2: acknowledged. MQTT 5 may answer with a failure (an ACL).
        with self._lock:
            self._done[mid] = reason_code.is_failure

    # -- the bridge's thread --------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        except ValueError as e:
            raise UserError(f"broker.host = {self.cfg.host!r}: {e}; give a host name or address") from None
        self._client.loop_start()  # connects, and reconnects, in paho's thread

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        """Hand one message over (never blocks); False when it cannot be delivered (counted)."""
        self._published += 1
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        kept = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN)  # QoS>0: queued
        if not kept:
            self._undelivered += 1
            return False
        self._pending[info.mid] = info
        return True

    def sweep(self) -> None:
        """Move finished messages from pending into delivered / undelivered (cheap to call often)."""
        with self._lock:
            done, self._done = self._done, {}
            connects = self._connects
        for mid, refused in done.items():
            if self._pending.pop(mid, None) is not None:
                self._undelivered += refused
                self._delivered += not refused
        if connects != self._scanned_connects:  # paho marks the QoS 0 messages a broken socket swallowed
            self._scanned_connects = connects
            lost = [mid for mid, info in self._pending.items() if info.rc == MQTTErrorCode.MQTT_ERR_CONN_LOST]
            for mid in lost:
                del self._pending[mid]
            self._undelivered += len(lost)

    def counts(self) -> LinkCounts:
        with self._lock:
            connects, connected = self._connects, self._connected
        return LinkCounts(
            published=self._published, delivered=self._delivered, undelivered=self._undelivered,
            pending=len(self._pending), connects=connects, connected=connected,
        )  # fmt: skip

    def is_alive(self) -> bool:
        thread = self._client._thread  # paho exposes no accessor; None before start and after loop_stop
        return thread is not None and thread.is_alive()

    def close(self, final: tuple[str, bytes, int, bool], timeout_s: float = 2.0) -> LinkCounts:
        """Publish `final` (topic, payload, qos, retain: the "unavailable" state) and stop.

        Delivered: a clean disconnect. Not delivered in `timeout_s` (or the broker away): the socket is
        dropped without DISCONNECT, so the broker publishes the last will instead; either way a subscriber
        is left with "unavailable", never with the last "busy".
        """
        self._closing = True
        delivered = False
        if self.counts().connected and self.publish(*final):
            mid = next(reversed(self._pending))
            deadline = time.monotonic() + timeout_s
            while mid in self._pending and time.monotonic() < deadline:
                time.sleep(0.01)
                self.sweep()
            delivered = mid not in self._pending
        if delivered:
            self._client.disconnect()  # clean: the broker discards the will; the retained state already says it
            self._client.loop_stop()
        else:
            self._client.loop_stop()
            sock = self._client.socket()
            if sock is not None:
                sock.close()  # no DISCONNECT: the broker sends the will
        self.sweep()
        self._undelivered += len(self._pending)  # never acknowledged: count it lost
        self._pending.clear()
        return self.counts()
