"""The adapter's requests to the daemon's control endpoint (Trigger, SelectRecipe), on their own thread.

Neither the stream thread nor the PLC thread may wait for the daemon: the reject pulses and the stream's
heartbeats are time-critical. This thread ("daemon-control") owns one REQ socket (edge.client.control.
ControlClient, kept open so that a trigger pays no connect), takes requests from a bounded queue, one at
a time, and leaves every answer, or the reason there is none, in `answers` for the PLC thread.
"""

from __future__ import annotations

import logging
import queue
import threading

import zmq

from edge.adapter.handshake import ControlAnswer
from edge.client.control import ControlClient
from edge.security import ClientHook
from edge.wire import Request

log = logging.getLogger("edge.control_link")


class ControlLink:
    def __init__(self, endpoint: str, timeout_s: float, configure: ClientHook | None = None) -> None:
        self.endpoint, self.timeout_s, self.configure = endpoint, timeout_s, configure
        self.requests: queue.Queue[tuple[str, Request]] = queue.Queue(maxsize=16)
        self.answers: queue.Queue[ControlAnswer] = queue.Queue(maxsize=64)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="daemon-control", daemon=True)

    def submit(self, kind: str, request: Request) -> bool:
        """Queue a request without blocking; False when 16 are already waiting."""
        try:
            self.requests.put_nowait((kind, request))
            return True
        except queue.Full:
            return False

    def take(self) -> list[ControlAnswer]:
        out = []
        while True:
            try:
                out.append(self.answers.get_nowait())
            except queue.Empty:
                return out

    def _run(self) -> None:
        ctx = zmq.Context()
        client = ControlClient(self.endpoint, ctx=ctx, configure=self.configure)
        try:
            while not self._stop.is_set():
                try:
                    kind, request = self.requests.get(timeout=0.05)
                except queue.Empty:
                    continue
                try:
                    answer = ControlAnswer(kind, request, client.request(request, self.timeout_s))
                except (TimeoutError, zmq.ZMQError) as e:
                    log.warning("control endpoint %s: %s", self.endpoint, e)
                    answer = ControlAnswer(kind, request, None, str(e))
                try:
                    self.answers.put_nowait(answer)
                except queue.Full:  # the PLC thread drains every poll; full means it is stuck, and says so itself
                    log.error("control answers not taken: %s lost", kind)
        finally:
            client.close()
            ctx.term()

    def __enter__(self) -> ControlLink:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
