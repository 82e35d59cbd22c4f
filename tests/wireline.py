"""Test helper: a WirePublisher with a heartbeat thread that tests can pause, for adapters that watch heartbeats.

One lock guards the socket (ZeroMQ sockets are not thread-safe): the heartbeat thread and the test's
frames take turns.
"""

from __future__ import annotations

import threading

from edge import wire
from wirepub import WirePublisher

STREAMING = (wire.CameraHealth(camera="cam1", state="streaming"),)


class Line:
    def __init__(self, period_s: float = 0.1, cameras=STREAMING, daemon: str = "d1", **health) -> None:
        self.pub = WirePublisher()
        self.endpoint = self.pub.endpoint
        self.period_s, self.cameras, self.daemon, self.health = period_s, list(cameras), daemon, health  # health: later-schema fields
        self.lock = threading.Lock()
        self.beating = threading.Event()  # clear() stops the heartbeats, set() resumes them
        self.beating.set()
        self._stop = threading.Event()
        self._seq = 0
        self._thread = threading.Thread(target=self._beat, name="test-heartbeats", daemon=True)

    def start(self) -> Line:
        """Wait for an adapter's two subscriptions (frame.<camera>, health.), then start beating.

        XPUB reports each topic once, so a second adapter with the same topics is not waited for: it
        still gets every heartbeat after it joins."""
        self.pub.wait_for_subscribers(2)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.period_s):
            if self.beating.is_set():
                with self.lock:
                    self.pub.health(self._seq, daemon=self.daemon, period_s=self.period_s, cameras=self.cameras, **self.health)
                    self._seq += 1

    def frame(self, **kw):
        with self.lock:
            return self.pub.frame(**kw)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self.pub.close()
