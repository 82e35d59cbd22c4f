"""The control endpoint: a REP socket on its own thread taking the wire's Request structs.

    Reload(bundle=None | path)                       load the bundle (fully) and swap it in between batches
    ApplyThresholds(image, pixel=None, review=None)  judge from the next batch on with these thresholds (and band)
    Status()                                         model id and thresholds in force, with a one-line summary
    Trigger(camera, part_id, timeout_ms)             the camera's next frame grabbed from now on carries part_id (one at a time)
    SelectRecipe(name | number)                      load the recipe's bundle (fully) and swap it in between batches

Every request gets exactly one Reply (REP demands it), including malformed ones. The client side is
edge/client/control.py. Behind CURVE via open_bound's `secure` hook.
"""

from __future__ import annotations

import logging
from typing import Callable

import msgspec
import zmq

from edge.daemon.config import ControlConfig
from edge.daemon.sockets import open_bound
from edge.daemon.threads import Threaded
from edge.security import ServerHook
from edge.wire import Reply, Request

log = logging.getLogger("edge.control")


class ControlServer(Threaded):
    def __init__(self, ctx: zmq.Context, cfg: ControlConfig, handle: Callable[[Request], Reply], secure: ServerHook | None = None):
        self.handle = handle
        # Bound here so errors reach the caller; the thread owns it from start() on.
        self.sock, self.endpoints = open_bound(ctx, zmq.REP, [cfg.endpoint], role="control.endpoint", linger_ms=0, secure=secure)
        super().__init__("control", owned=[self.sock])

    def _run(self) -> None:
        decoder = msgspec.msgpack.Decoder(Request)
        encoder = msgspec.msgpack.Encoder()
        while not self.stop_event.is_set():
            if not self.sock.poll(100, zmq.POLLIN):
                continue
            raw = self.sock.recv()
            try:
                request = decoder.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                reply = Reply(ok=False, message=f"bad request ({e}); send a msgpack map with type reload, apply, status, trigger or recipe")
            else:
                log.info("control: %s", request)
                try:
                    reply = self.handle(request)
                except Exception as e:  # the daemon keeps running on a failed request, and says why
                    log.exception("control request %s failed", request)
                    reply = Reply(ok=False, message=f"{type(e).__name__}: {e}")
            self.sock.send(encoder.encode(reply))
