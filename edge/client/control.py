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
