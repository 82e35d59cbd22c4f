"""Repeated trouble logged once per minute with a count, so the one line that matters is not buried.

A full disk fails every archive write and a refused client retries ten times a second. The first
occurrence of each kind (`key`) is logged at once; later ones within `window_s` are only counted, and
the next line of that kind after the window says how many it stands for:

    archive: cannot write cam seq 912: [Errno 28] No space left on device (37 more in the last 60 s)

When the trouble stops, `tick()` (from a loop that goes idle) or `flush()` (at shutdown) logs the last
held-back occurrence with its count, so no count is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field


@dataclass
class _Kind:
    since: float  # when the last line of this kind was logged
    held: int = 0  # occurrences counted, not logged, since then
    last: tuple = field(default_factory=tuple)  # (level, msg, args) of the latest one held


class RateLimitedLog:
    """One per part that logs (archive, worker, ZAP handler, ...); thread-safe."""

    def __init__(self, logger: logging.Logger, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.window_s = window_s
        self.clock = clock
        self.lock = threading.Lock()
        self.kinds: dict[Hashable, _Kind] = {}

    def log(self, key: Hashable, level: int, msg: str, *args: object, exc_info: object = None) -> bool:
        """Log now (True), or count it for the next line of this kind (False)."""
        now = self.clock()
        with self.lock:
            kind = self.kinds.get(key)
            if kind is not None and now - kind.since < self.window_s:
                kind.held += 1
                kind.last = (level, msg, args)
                return False
            self.kinds[key] = _Kind(since=now)
        if kind is not None and kind.held:
            msg, args = f"{msg} (%d more in the last %.0f s)", (*args, kind.held, now - kind.since)
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def tick(self) -> None:
        """Log the held-back count of every kind whose window has passed."""
        self._release(lambda kind, now: now - kind.since >= self.window_s)

    def flush(self) -> None:
        """Log every held-back count now (at shutdown)."""
        self._release(lambda kind, now: True)

    def _release(self, due: Callable[[_Kind, float], bool]) -> None:
        now = self.clock()
        with self.lock:
            released = [(k, self.kinds.pop(k)) for k, kind in list(self.kinds.items()) if kind.held and due(kind, now)]
        for _, kind in released:
            level, msg, args = kind.last
            self.logger.log(level, f"{msg} (repeated %d times in the last %.0f s)", *args, kind.held, now - kind.since)
