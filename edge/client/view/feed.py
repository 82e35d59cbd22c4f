"""The view's subscriber thread: reads the daemon's wire like any other client and fills the ViewState.

It owns its SUB socket (created and closed in the thread) and only ever hands finished events to the
state, so neither a slow browser nor a slow render reaches the socket: if this thread fell behind, the
daemon would drop this subscriber's messages (seen here as `lost`), never slow inspection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from edge.client.subscriber import BadMessage, FrameEvent, HealthEvent, HeartbeatLost, SocketHook, Subscriber
from edge.client.view.state import ViewState

log = logging.getLogger("edge.view")


class Feed:
    def __init__(self, state: ViewState, endpoints: Sequence[str], *, configure: SocketHook | None = None, missed_heartbeats: int = 3):
        self.state = state
        self.endpoints = list(endpoints)
        self.configure = configure
        self.missed_heartbeats = missed_heartbeats
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.error: str | None = None
        self.thread = threading.Thread(name="view-feed", target=self._run, daemon=True)

    def start(self, timeout_s: float = 5.0) -> None:
        """Start the thread and wait until its socket is connected; ValueError names a bad endpoint."""
        self.thread.start()
        if not self.ready.wait(timeout_s):
            raise RuntimeError(f"the view's subscriber did not start within {timeout_s:g} s")
        if self.error:
            raise ValueError(self.error)

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout_s: float) -> bool:
        if self.thread.ident is not None:
            self.thread.join(timeout_s)
        return not self.thread.is_alive()

    def _run(self) -> None:
        try:
            sub = Subscriber(self.endpoints, masks=True, configure=self.configure, missed_heartbeats=self.missed_heartbeats)
        except ValueError as e:
            self.error = str(e)
            self.ready.set()
            return
        self.ready.set()
        with sub:
            while not self.stop_event.is_set():
                match sub.receive(timeout_s=0.2):
                    case FrameEvent() as event:
                        if event.lost:
                            log.warning("%s: lost %d frame(s) before seq %d on the way to the view", event.header.camera, event.lost, event.header.seq)
                        self.state.on_frame(event)
                    case HealthEvent() as event:
                        self.state.on_health(event)
                    case HeartbeatLost(daemon=d, silent_s=s):
                        log.warning("no heartbeat from %s for %.1f s: shown as down", d or "any inspector", s)
                    case BadMessage(topic=t, error=e):
                        log.warning("bad message on %r: %s", t, e)
                        self.state.on_bad(f"{t}: {e}")
                    case None:
                        pass
