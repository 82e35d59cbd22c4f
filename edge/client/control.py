"""The control endpoint's client side: one request, one reply (see edge/daemon/control.py for the server).

Used by `ssae calibrate apply` and the tests; any language can do the same with a REQ socket and msgpack.
"""

from __future__ import annotations

import msgspec
import zmq

from edge.security import ClientHook
from edge.wire import Reply, Request


def send_request(endpoint: str, request: Request, *, timeout_s: float = 30.0, ctx: zmq.Context | None = None, configure: ClientHook | None = None) -> Reply:
    """One request/reply round trip; TimeoutError when the daemon does not answer in time."""
    ctx = ctx or zmq.Context.instance()
    with ctx.socket(zmq.REQ) as sock:
        sock.linger = 0
        if configure is not None:
            configure(sock)  # CURVE keys, before connect
        sock.connect(endpoint)
        sock.send(msgspec.msgpack.encode(request))
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise TimeoutError(f"no reply from the control endpoint {endpoint} within {timeout_s:g} s; is the daemon running with [control] set?")
        return msgspec.msgpack.decode(sock.recv(), type=Reply)


class ControlClient:
    """One REQ socket kept open for many requests (a trigger should not pay a connect, or a CURVE handshake,
    each time). Owned by one thread. After a timeout the socket is replaced: a REQ socket that sent and
    got no reply can send nothing else, and the late reply must not be taken for the next request's."""

    def __init__(self, endpoint: str, *, ctx: zmq.Context, configure: ClientHook | None = None) -> None:
        self.endpoint, self.ctx, self.configure = endpoint, ctx, configure
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = msgspec.msgpack.Decoder(Reply)
        self.sock: zmq.Socket | None = None

    def request(self, request: Request, timeout_s: float) -> Reply:
        """One round trip; TimeoutError when no reply comes within timeout_s."""
        if self.sock is None:
            self.sock = self.ctx.socket(zmq.REQ)
            self.sock.linger = 0
            if self.configure is not None:
                self.configure(self.sock)
            self.sock.connect(self.endpoint)
        self.sock.send(self.encoder.encode(request))
        if not self.sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            self.close()
            raise TimeoutError(f"no reply from the control endpoint {self.endpoint} within {timeout_s:g} s")
        return self.decoder.decode(self.sock.recv())

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
