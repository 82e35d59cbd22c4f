"""The control endpoint: a REP socket on its own thread taking the wire's Request structs.

    Reload(bundle=None | path)             load the bundle (fully) and swap it in between batches
    ApplyThresholds(image, pixel=None)     judge from the next batch on with these thresholds
    Status()                               model id and thresholds in force, with a one-line summary

Every request gets exactly one Reply (REP demands it), including malformed ones. `send_request` is the
client side, for `ssae calibrate apply` and tests. Behind CURVE (issue 6) via edge.sockets' `secure`.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import msgspec
import zmq

from edge.config import ControlConfig
from edge.sockets import Secure, open_bound
from edge.wire import Reply, Request

log = logging.getLogger("edge.control")


class ControlServer:
    def __init__(self, ctx: zmq.Context, cfg: ControlConfig, handle: Callable[[Request], Reply], secure: Secure | None = None):
        self.handle = handle
        self.stop_event = threading.Event()
        # Bound here so errors reach the caller; only the thread uses the socket after start().
        self.sock, self.endpoints = open_bound(ctx, zmq.REP, [cfg.endpoint], role="control.endpoint", linger_ms=0, secure=secure)
        self.thread = threading.Thread(name="control", target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float) -> bool:
        if self.thread.ident is not None:
            self.thread.join(timeout)
        else:
            self.sock.close()
        return not self.thread.is_alive()

    def _run(self) -> None:
        decoder = msgspec.msgpack.Decoder(Request)
        encoder = msgspec.msgpack.Encoder()
        try:
            while not self.stop_event.is_set():
                if not self.sock.poll(100, zmq.POLLIN):
                    continue
                raw = self.sock.recv()
                try:
                    request = decoder.decode(raw)
                except (msgspec.DecodeError, msgspec.ValidationError) as e:
                    reply = Reply(ok=False, message=f"bad request ({e}); send a msgpack map with type reload, apply or status")
                else:
                    log.info("control: %s", request)
                    try:
                        reply = self.handle(request)
                    except Exception as e:  # the daemon keeps running on a failed request, and says why
                        log.exception("control request %s failed", request)
                        reply = Reply(ok=False, message=f"{type(e).__name__}: {e}")
                self.sock.send(encoder.encode(reply))
        finally:
            self.sock.close()


def send_request(endpoint: str, request: Request, *, timeout_s: float = 30.0, ctx: zmq.Context | None = None, secure: Secure | None = None) -> Reply:
    """One request/reply round trip; TimeoutError when the daemon does not answer in time."""
    ctx = ctx or zmq.Context.instance()
    with ctx.socket(zmq.REQ) as sock:
        sock.linger = 0
        if secure is not None:
            secure(sock, "control client")
        sock.connect(endpoint)
        sock.send(msgspec.msgpack.encode(request))
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise TimeoutError(f"no reply from the control endpoint {endpoint} within {timeout_s:g} s; is the daemon running with [control] set?")
        return msgspec.msgpack.decode(sock.recv(), type=Reply)
