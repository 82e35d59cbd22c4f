"""Triggered inspection: a trigger (control request `Trigger`) names the next frame of its camera.

    control thread:  arm(part_id, timeout_ms)    ──► the slot holds one pending trigger, stamped on arrival
    capture thread:  take(capture_ns) at _emit   ──► the first frame grabbed at or after that stamp carries
                                                     its part_id and trigger_id; the slot is free again

Why the daemon, not a subscriber, binds trigger to frame: between grab and a subscriber there are the
queue, a batch in flight and the network, several frames at video rates. The next frame *published*
after a PLC's trigger was usually grabbed before the part arrived; only the capture thread knows which
frame was grabbed after the trigger reached the daemon. The trigger's own latency on the way in makes
the tagged frame a little later, never earlier.

One trigger per camera at a time: a second one while the first still waits for a frame is refused
(busy), and a trigger no frame answers within its timeout expires (a missed acquisition). Both are
counted in the camera's heartbeat (triggers, triggers_refused, triggers_missed).
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

from edge.wire import CameraHealth

# The heartbeat expires a trigger only this long past its deadline: a frame grabbed just in time is
# tagged a moment after its grab, and must not find its trigger already written off.
GRACE_NS = 1_000_000_000


class Pending(NamedTuple):
    trigger_id: int
    part_id: str
    arrived_ns: int  # wall clock (time.time_ns), the clock frames are stamped with at grab
    deadline_ns: int


class TriggerSlot:
    """The trigger waiting for the next frame of one camera; shared by the control and capture threads."""

    def __init__(self, camera: str):
        self.camera = camera
        self.lock = threading.Lock()
        self.pending: Pending | None = None
        self.next_id = 1
        self.accepted = self.refused = self.missed = 0

    def arm(self, part_id: str, timeout_ms: float, now_ns: int) -> tuple[int, str]:
        """(trigger_id, "") when armed, (0, why not) when refused."""
        with self.lock:
            self._expire(now_ns)
            if self.pending is not None:
                self.refused += 1
                age_ms = (now_ns - self.pending.arrived_ns) / 1e6
                return 0, f"busy: trigger {self.pending.trigger_id} of camera {self.camera} still waits for a frame ({age_ms:.0f} ms); trigger again after its result"
            p = Pending(self.next_id, part_id, now_ns, now_ns + int(timeout_ms * 1e6))
            self.pending, self.next_id = p, self.next_id + 1
            self.accepted += 1
            return p.trigger_id, ""

    def refuse(self) -> None:
        with self.lock:
            self.refused += 1

    def take(self, capture_ns: int) -> Pending | None:
        """The trigger a frame grabbed at capture_ns answers, if any (then the slot is free)."""
        with self.lock:
            p = self.pending
            if p is None or capture_ns < p.arrived_ns:  # grabbed before the trigger arrived: not its frame
                return None
            self.pending = None
            if capture_ns > p.deadline_ns:
                self.missed += 1
                return None
            return p

    def counts(self, now_ns: int) -> tuple[int, int, int]:
        """(accepted, refused, missed); a trigger past its deadline counts as missed even with no frame since."""
        with self.lock:
            self._expire(now_ns - GRACE_NS)
            return self.accepted, self.refused, self.missed

    def _expire(self, now_ns: int) -> None:
        if self.pending is not None and now_ns > self.pending.deadline_ns:
            self.pending = None
            self.missed += 1


def arm_trigger(slots: dict[str, TriggerSlot], cameras: list[CameraHealth], camera: str, part_id: str, timeout_ms: float) -> tuple[int, str]:
    """The control endpoint's Trigger: (trigger_id, "") when armed, (0, why not) when refused."""
    slot = slots.get(camera)
    if slot is None:
        return 0, f"no camera {camera!r}; this daemon has {', '.join(slots)}"
    state = next((c.state for c in cameras if c.camera == camera), "starting")
    if state in ("failed", "finished"):
        slot.refuse()
        return 0, f"camera {camera} is {state}: no frame will come; fix the camera and trigger again"
    if not timeout_ms > 0:
        slot.refuse()
        return 0, f"timeout_ms = {timeout_ms} is not above 0; give the frame time to come"
    return slot.arm(part_id, timeout_ms, time.time_ns())
