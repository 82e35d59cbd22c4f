"""Batches in flight on a GPU backend: slots, tickets, stage timings, and the pipelined `infer`.

A slot owns one set of page-locked host buffers, device buffers and a CUDA stream. `submit` copies a
batch into a free slot and enqueues upload, compute and download on its stream, then returns at once
with a ticket; `collect` waits for that slot's download and hands back copies of the results. With two
or more slots the upload of batch k+1 overlaps the compute of batch k and the download of batch k-1.

This module is pure Python: the TensorRT and torch-cuda backends share it, and the tests exercise it
on the CPU (see edge/backend_torch_cuda.py with device="cpu").
"""

from __future__ import annotations

import collections
from typing import Protocol

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
