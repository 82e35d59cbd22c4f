"""Batches between the inference worker and its backend: submitted in order, collected in order.

A pipelined backend (TensorRT, torch-cuda: `free_slots`, `submit`, `collect_timed`, see edge/inflight.py)
takes batch k+1 while batch k is still on the device, so the upload, compute and download of consecutive
batches overlap. A blocking backend (ONNX Runtime: `infer` only) runs the batch inside `submit`, and the
batch is ready at once: for it nothing changes. Either way batches come back oldest first, and a batch that
fails (at submit or at collect) comes back with its error, for exactly its own frames.

    worker ──submit(batch k+1)──► backend slots ──collect(batch k)──► worker (judge, publish)
"""

from __future__ import annotations

import collections
import time
from typing import Any, NamedTuple

import numpy as np

from edge.inflight import StageTimes, Ticket


class Result(NamedTuple):
    maps: np.ndarray | None  # (n, H, W) float32; None when nothing ran or it failed
    scores: np.ndarray | None  # (n,) float32
    error: Exception | None  # the backend's exception: every frame of this batch becomes "unknown"
    seconds: float  # submit to results in hand (includes time queued behind earlier batches)
    times: StageTimes | None  # upload, compute and download on the device; pipelined backends only


class _Pending:
    """One batch given to the backend: its ticket while in flight, its result once in hand."""

    __slots__ = ("tag", "backend", "ticket", "result", "started")

    def __init__(self, tag: Any, backend, started: float):
        self.tag = tag
        self.backend = backend
        self.ticket: Ticket | None = None
        self.result: Result | None = None
        self.started = started


def pipelined(backend) -> bool:
    """Backends with slots and tickets (TensorRT, torch-cuda); ONNX Runtime has `infer` only."""
    return hasattr(backend, "submit")


class Pipeline:
    """The batches one worker has given to its backend and not yet collected, oldest first.

    Owned by one thread (the worker); every pending batch belongs to the same backend, since the worker
    collects them all before it submits to another (a reload swaps the backend between batches).
    """

    def __init__(self):
        self.pending: collections.deque[_Pending] = collections.deque()

    def __len__(self) -> int:
        return len(self.pending)

    @property
    def backend(self):
        """The backend the pending batches run on; None when nothing is pending."""
        return self.pending[-1].backend if self.pending else None

    def has_room(self, backend) -> bool:
        """True when `submit` on this backend will not block: a free slot, or a blocking backend."""
        return not pipelined(backend) or backend.free_slots() > 0

    def submit(self, backend, frames: np.ndarray | None, tag: Any) -> None:
        """Give one batch to the backend; `tag` comes back with its result. frames None: nothing to run
        (every frame was refused before inference), the tag only keeps its place in the order."""
        item = _Pending(tag, backend, time.perf_counter())
        self.pending.append(item)
        if frames is None:
            item.result = Result(None, None, None, 0.0, None)
            return
        try:
            if pipelined(backend):
                item.ticket = backend.submit(frames)  # returns at once; the device works while we gather
            else:
                maps, scores = backend.infer(frames)
                item.result = Result(maps, scores, None, time.perf_counter() - item.started, None)
        except Exception as e:  # a failing batch must not stop the line: its frames become "unknown"
            item.result = Result(None, None, e, time.perf_counter() - item.started, None)

    def ready(self) -> bool:
        """True when the oldest batch's result is in hand (a blocking backend, nothing to run, or an error)."""
        return bool(self.pending) and self.pending[0].result is not None

    def collect(self) -> tuple[Any, Result]:
        """(tag, result) of the oldest batch, waiting for the device if it is still in flight."""
        item = self.pending.popleft()
        if item.result is not None:
            return item.tag, item.result
        try:
            if hasattr(item.backend, "collect_timed"):
                maps, scores, times = item.backend.collect_timed(item.ticket)
            else:
                (maps, scores), times = item.backend.collect(item.ticket), None
        except Exception as e:
            return item.tag, Result(None, None, e, time.perf_counter() - item.started, None)
        return item.tag, Result(maps, scores, None, time.perf_counter() - item.started, times)
