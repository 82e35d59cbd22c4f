"""Batches in flight: slots, tickets, stage timings, the pipelined `infer`, and the worker's queue of batches.

Every backend is pipelined: `submit` takes a batch into a free slot and returns a ticket at once, `collect`
hands back that batch's results. On a GPU (TensorRT, torch-cuda) a slot owns one set of page-locked host
buffers, device buffers and a CUDA stream; on the CPU (ONNX Runtime) a slot is a place in the runner
thread's queue. `submit` copies a
batch into a free slot and enqueues upload, compute and download on its stream, then returns at once
with a ticket; `collect` waits for that slot's download and hands back copies of the results. With two
or more slots the upload of batch k+1 overlaps the compute of batch k and the download of batch k-1.

This module is pure Python: every backend shares it, and the tests exercise it on the CPU (see edge/backends/torch_cuda.py with device="cpu").
"""

from __future__ import annotations

import collections
import time
from typing import Any, NamedTuple, Protocol

import msgspec
import numpy as np


class InFlightError(RuntimeError):
    """A ticket was misused: every slot busy, a ticket collected twice, or a stale one."""


class Ticket(msgspec.Struct, frozen=True):
    slot: int
    seq: int  # submission number, unique per backend: tells a stale ticket from the current one
    count: int  # frames in the batch


class StageTimes(msgspec.Struct, frozen=True, kw_only=True):
    """Milliseconds per stage of one batch, measured on the device (CUDA events) or the host (CPU)."""

    count: int
    h2d_ms: float
    compute_ms: float
    d2h_ms: float

    @property
    def total_ms(self) -> float:
        return self.h2d_ms + self.compute_ms + self.d2h_ms


class SlotRing:
    """Hands out free slots in round-robin order; a slot is busy from submit until collect."""

    def __init__(self, slots: int):
        if slots < 1:
            raise ValueError(f"in_flight must be at least 1, got {slots}")
        self.busy: list[int | None] = [None] * slots  # seq of the ticket holding each slot
        self.next_slot = 0
        self.seq = 0

    def __len__(self) -> int:
        return len(self.busy)

    def free(self) -> int:
        return sum(s is None for s in self.busy)

    def acquire(self, count: int) -> Ticket:
        for k in range(len(self.busy)):
            slot = (self.next_slot + k) % len(self.busy)
            if self.busy[slot] is None:
                self.seq += 1
                self.busy[slot] = self.seq
                self.next_slot = (slot + 1) % len(self.busy)
                return Ticket(slot, self.seq, count)
        raise InFlightError(f"all {len(self.busy)} in-flight slots are busy; collect a ticket before submitting another batch")

    def check(self, ticket: Ticket) -> None:
        if not 0 <= ticket.slot < len(self.busy) or self.busy[ticket.slot] != ticket.seq:
            raise InFlightError(f"ticket {ticket.seq} (slot {ticket.slot}) is not in flight: collected already, or from another backend")

    def release(self, ticket: Ticket) -> None:
        self.check(ticket)
        self.busy[ticket.slot] = None


def check_frames(frames: np.ndarray, shape: tuple[int, int, int], max_batch: int) -> int:
    """The batch size of `frames`, after checking dtype, shape and size against the backend's buffers."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != shape:
        got = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f"frames must be uint8 (N, {', '.join(map(str, shape))}); got {got}")
    n = frames.shape[0]
    if not 1 <= n <= max_batch:
        raise ValueError(f"batch of {n} frames; this backend takes 1..{max_batch} per submit (its max_batch)")
    return n


class Pipelined(Protocol):
    max_batch: int

    def submit(self, frames: np.ndarray) -> Ticket: ...

    def collect(self, ticket: Ticket) -> tuple[np.ndarray, np.ndarray]: ...

    def free_slots(self) -> int: ...


def infer_pipelined(backend: Pipelined, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Any number of frames through the free slots, max_batch at a time, results in input order.

    Keeps every free slot busy: chunk k+1 is submitted before chunk k is collected.
    """
    depth = backend.free_slots()
    if depth < 1:
        raise InFlightError("no free slot: collect the tickets in flight before calling infer")
    if len(frames) == 0:
        raise ValueError("infer needs at least one frame")
    pending: collections.deque[Ticket] = collections.deque()
    maps, scores = [], []
    try:
        for start in range(0, len(frames), backend.max_batch):
            if len(pending) == depth:
                m, s = backend.collect(pending.popleft())
                maps.append(m)
                scores.append(s)
            pending.append(backend.submit(frames[start : start + backend.max_batch]))
        while pending:
            m, s = backend.collect(pending.popleft())
            maps.append(m)
            scores.append(s)
    finally:
        while pending:  # after an error: free the slots so the backend stays usable
            try:
                backend.collect(pending.popleft())
            except Exception:  # noqa: BLE001 - the first error is the one raised
                pass
    if len(maps) == 1:
        return maps[0], scores[0]
    return np.concatenate(maps), np.concatenate(scores)


# --- the worker's side: batches submitted in order, collected in order ----------------------------------
#
#     worker ──submit(batch k+1)──► backend slots ──collect(batch k)──► worker (judge, publish)
#
# Batch k+1 is submitted while batch k still runs, so (on a GPU) the upload, compute and download of
# consecutive batches overlap and (on the CPU) ONNX Runtime never waits for Python between batches. A batch
# that fails, at submit or at collect, comes back with its error, for exactly its own frames.


class Result(NamedTuple):
    maps: np.ndarray | None  # (n, H, W) float32; None when nothing ran or it failed
    scores: np.ndarray | None  # (n,) float32
    error: Exception | None  # the backend's exception: every frame of this batch becomes "unknown"
    seconds: float  # submit to results in hand (includes time queued behind earlier batches)
    times: StageTimes | None  # upload, compute and download measured by the backend, where it has `collect_timed`


class _Pending:
    """One batch given to the backend: its ticket while in flight, its result once in hand."""

    __slots__ = ("tag", "backend", "ticket", "result", "started")

    def __init__(self, tag: Any, backend, started: float):
        self.tag = tag
        self.backend = backend
        self.ticket: Ticket | None = None
        self.result: Result | None = None
        self.started = started


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

    def has_room(self, backend: Pipelined) -> bool:
        """True when `submit` on this backend will not block: it has a free slot."""
        return backend.free_slots() > 0

    def submit(self, backend: Pipelined, frames: np.ndarray | None, tag: Any) -> None:
        """Give one batch to the backend; `tag` comes back with its result. frames None: nothing to run
        (every frame was refused before inference), the tag only keeps its place in the order."""
        item = _Pending(tag, backend, time.perf_counter())
        self.pending.append(item)
        if frames is None:
            item.result = Result(None, None, None, 0.0, None)
            return
        try:
            item.ticket = backend.submit(frames)  # returns at once; the backend works while we gather
        except Exception as e:  # a failing batch must not stop the line: its frames become "unknown"
            item.result = Result(None, None, e, time.perf_counter() - item.started, None)

    def ready(self) -> bool:
        """True when the oldest batch's result is in hand (nothing to run, or an error at submit)."""
        return bool(self.pending) and self.pending[0].result is not None

    def collect(self) -> tuple[Any, Result]:
        """(tag, result) of the oldest batch, waiting for the backend if it is still in flight."""
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
