"""ONNX Runtime on CPU: the embedded default.

`infer` runs a batch and returns. The daemon uses `submit`/`collect` instead (the pipelined shape of the GPU
backends, see edge/backends/inflight.py): one runner thread calls the session back to back while the worker thread
judges and publishes the previous batch, so ONNX Runtime's threads never wait for Python between batches.
Session.run releases the GIL, so that overlap is real on a multi-core CPU.

Threads: `threads` intra-op threads (0: the cores this process may run on), and by default they do not
spin. ONNX Runtime's own default lets idle pool threads busy-wait for the next parallel section: on a box
with few cores that burns the cores capture decode, post-processing, publishing and the subscribers need,
and beside any other busy process a spinning pool waits on a descheduled shard and collapses (measured in
BENCHMARKS.md, "Edge daemon defaults"). Blocking threads cost a wake-up per parallel section instead, which is small
next to this model's convolutions. `spin=True` restores ONNX Runtime's default for a box given to it alone.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from edge.backends.inflight import SlotRing, Ticket, check_frames
from edge.bundle import Bundle
from edge.manifest import BundleError

SPIN_KEY = "session.intra_op.allow_spinning"  # ONNX Runtime's session config key; "1" (spin) is its default


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a cpuset or systemd's CPUAffinity), not the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class OrtBackend:
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, *, threads: int = 0, max_batch: int = 8, spin: bool = False, providers: list[str] | None = None, in_flight: int = 2):
        import onnxruntime as ort  # edge boxes without it can still run `ssae edge --help`

        options = ort.SessionOptions()
        # Intra-op threads = cores given; one inter-op thread since the graph is a single chain.
        options.intra_op_num_threads = threads or usable_cores()
        options.inter_op_num_threads = 1
        options.add_session_config_entry(SPIN_KEY, "1" if spin else "0")  # why off by default: the module docstring
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(bundle.model_path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise BundleError(f"bundle refused: ONNX Runtime cannot load {bundle.model_path} ({e}); re-export the bundle") from e
        spec = bundle.manifest.input
        self.input_name = spec.name
        self.output_names = [bundle.manifest.outputs.anomaly_map, bundle.manifest.outputs.score]
        self.shape = (spec.height_px, spec.width_px, spec.channels)
        self.max_batch = max_batch
        self.threads = options.intra_op_num_threads
        self.spin = spin
        self.slots = SlotRing(in_flight)
        self.futures: dict[int, Future] = {}  # slot -> the run of the batch holding it
        self.runner: ThreadPoolExecutor | None = None  # started by the first submit: `infer` users never need it

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if frames.dtype != np.uint8 or frames.shape[1:] != self.shape:
            raise ValueError(f"frames must be uint8 (N, {', '.join(map(str, self.shape))}); got {frames.dtype} {frames.shape}")
        return self._run(np.ascontiguousarray(frames))

    def _run(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        amap, score = self.session.run(self.output_names, {self.input_name: frames})
        return amap, score

    # --- pipelined: batches queue on one runner thread, collected in any order by ticket -------------------
    def free_slots(self) -> int:
        return self.slots.free()

    def submit(self, frames: np.ndarray) -> Ticket:
        check_frames(frames, self.shape, self.max_batch)
        if self.runner is None:
            self.runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        ticket = self.slots.acquire(len(frames))
        # A copy: the caller may reuse its array while the batch waits its turn.
        self.futures[ticket.slot] = self.runner.submit(self._run, np.array(frames, order="C", copy=True))
        return ticket

    def collect(self, ticket: Ticket) -> tuple[np.ndarray, np.ndarray]:
        self.slots.check(ticket)
        try:
            return self.futures[ticket.slot].result()  # re-raises the run's exception for exactly this batch
        finally:
            del self.futures[ticket.slot]
            self.slots.release(ticket)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.shutdown(wait=True)  # a batch still running finishes before the session goes
            self.runner = None
        self.futures.clear()
        self.session = None
