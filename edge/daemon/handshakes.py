"""With CURVE on: log the clients the daemon's sockets turn away before the allow-list is even asked.

A client without CURVE, or with a wrong server public key, fails the ZMTP handshake inside libzmq and
never reaches the ZAP handler (edge/security.py, which logs refused client keys itself), so without this
a plain `ssae edge tap` against a CURVE daemon would be refused in silence on both sides. libzmq reports
these failures as socket monitor events; one thread reads the monitors of the daemon's bound sockets and
logs each kind of refusal once a minute, with a count (clients retry every few hundred milliseconds).
"""

from __future__ import annotations

import logging

import zmq
from zmq.utils.monitor import recv_monitor_message

from edge.daemon.threads import Threaded
from edge.ratelimit import RateLimitedLog

log = logging.getLogger("edge.security")
EVENTS = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
WHY = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "does not use CURVE",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "uses a wrong server public key",
}


class HandshakeLog(Threaded):
    def __init__(self, ctx: zmq.Context, watched: list[tuple[zmq.Socket, str]]):
        """watched: (bound socket, config key naming it); call before those sockets' threads start."""
        self.monitors: list[tuple[zmq.Socket, str]] = []
        for n, (sock, role) in enumerate(watched):
            address = f"inproc://ssae-handshakes-{id(self)}-{n}"
            sock.monitor(address, EVENTS)
            monitor = ctx.socket(zmq.PAIR)
            monitor.linger = 0
            monitor.connect(address)
            self.monitors.append((monitor, role))
        self.refusals = RateLimitedLog(log)
        super().__init__("handshakes", owned=[m for m, _ in self.monitors])

    def _run(self) -> None:
        poller = zmq.Poller()
        roles = {}
        for monitor, role in self.monitors:
            poller.register(monitor, zmq.POLLIN)
            roles[monitor] = role
        try:
            while not self.stop_event.is_set():
                ready = dict(poller.poll(100))
                if not ready:
                    self.refusals.tick()
                for monitor in ready:
                    event = recv_monitor_message(monitor)
                    if event["event"] & EVENTS:
                        self._refused(roles[monitor], event)
        finally:
            self.refusals.flush()

    def _refused(self, role: str, event: dict) -> None:
        why = WHY.get(event["value"], f"failed the handshake (libzmq code {event['value']:#x})")
        endpoint = event["endpoint"].decode(errors="replace")
        self.refusals.log(
            (role, why), logging.WARNING,
            "CURVE: refused a client on %s %s: it %s; give it the daemon's public key and a client key pair from `ssae edge keys`",
            role, endpoint, why,
        )
