"""SIGINT and SIGTERM during training: finish the step, checkpoint it, stop with a message.

Ctrl-C sends SIGINT; systemd, `kill` and container runtimes send SIGTERM. Both only set a flag here, so
the training loop stops between two steps, where model, optimizer and step agree, and saves exactly
that state. A second signal while the step finishes raises KeyboardInterrupt at once (the way out of a
step that takes too long); the loop then says which checkpoint, if any, is on disk. During the export
(seconds) signals are only noted: a bundle stopped half way would help no one.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class StopSignals:
    """Context manager: while inside, SIGINT/SIGTERM request a stop instead of killing the process."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: str | None = None  # "SIGINT" / "SIGTERM" once one arrived
        self._previous: dict[int, object] = {}
        self._escapable = True

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and self._escapable:
            raise KeyboardInterrupt
        self.received = self.received or signal.Signals(signum).name

    @contextlib.contextmanager
    def finishing(self):
        """Inside, a second signal does not raise either: for work that must not stop half way."""
        self._escapable = False
        try:
            yield
        finally:
            self._escapable = True

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
