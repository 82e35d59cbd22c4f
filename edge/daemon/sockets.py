"""The one place where the daemon creates its bound ZeroMQ sockets (the PUB stream and the control REP).

Options are set before `bind` because ZeroMQ applies most of them only to later binds and connects, and
linger is always finite so that exit never hangs on an unread queue. Authentication (CURVE, issue 6) plugs
in through `secure`, a function that configures a server socket before it binds.
"""

from __future__ import annotations

import zmq

from edge.errors import UserError
from edge.security import ServerHook


def open_bound(
    ctx: zmq.Context,
    kind: int,
    endpoints: list[str],
    *,
    role: str,
    linger_ms: int,
    sndhwm: int | None = None,
    options: dict[int, int] | None = None,
    secure: ServerHook | None = None,
) -> tuple[zmq.Socket, list[str]]:
    """Create, configure and bind a socket; returns it with the endpoints actually bound (ports resolved)."""
    sock = ctx.socket(kind)
    try:
        sock.linger = linger_ms
        if sndhwm is not None:
            sock.sndhwm = sndhwm
        for option, value in (options or {}).items():
            sock.setsockopt(option, value)
        if secure is not None:
            secure(sock, role)
        bound = []
        for endpoint in endpoints:
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as e:
                raise UserError(
                    f"{role}: cannot bind {endpoint} ({e.strerror}); another process may hold it: stop it or choose another address"
                ) from None
            bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        return sock, bound
    except BaseException:
        sock.close(linger=0)
        raise
