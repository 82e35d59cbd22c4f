"""The one way a daemon part runs its long-lived thread: a name, a stop event, a bounded join, and what
the thread owns (its ZeroMQ socket, the archive's index) closed by that thread when it ends.

    class Part(Threaded):
        def __init__(self, ...):
            self.sock, _ = open_bound(...)                 # bound here: a bind error reaches the caller
            super().__init__("part", owned=[self.sock])
        def _run(self): ...                                # loops until self.stop_event is set

    part.start(); ...; part.stop(); part.join(timeout_s)  # True when the thread has ended

Sockets are not thread-safe: from start() on only the thread touches them, and it closes them on its way
out. Their linger was set when they were opened (edge/daemon/sockets.py), so closing never hangs. A part
that never started has no thread to do that, so join() closes what it owns.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol


class Closable(Protocol):
    def close(self) -> None: ...


class Threaded:
    """Base of the capture, the inference worker, the publisher, the control server and the archive."""

    def __init__(self, name: str, *, owned: Sequence[Closable] = ()):
        self.stop_event = threading.Event()
        self.owned = list(owned)
        self.thread = threading.Thread(name=name, target=self._main, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Ask the thread to finish; each part documents what it still completes (drains) before it ends."""
        self.stop_event.set()

    def join(self, timeout: float) -> bool:
        if self.thread.ident is None:
            self._close_owned()
            return True
        self.thread.join(timeout)
        return not self.thread.is_alive()

    @property
    def done(self) -> bool:
        """The thread ran and has ended."""
        return self.thread.ident is not None and not self.thread.is_alive()

    def _main(self) -> None:
        try:
            self._run()
        finally:
            self._close_owned()

    def _close_owned(self) -> None:
        for resource in self.owned:
            resource.close()

    def _run(self) -> None:
        raise NotImplementedError
