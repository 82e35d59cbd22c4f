"""Inference backends share one shape: uint8 frames in, anomaly maps and scores out.

Every backend runs the same exported graph (normalisation and post-processing inside it), so the
numbers on the line match training and calibration. GPU libraries are imported inside their backend.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np

from edge.backends.inflight import Ticket
from edge.bundle import Bundle

BackendName = Literal["onnxruntime", "tensorrt", "torch-cuda"]


class Backend(Protocol):
    """What every backend implements. The daemon's worker uses the pipelined half (free_slots, submit,
    collect; see edge/backends/inflight.py); tools and tests use `infer`."""

    name: str
    max_batch: int

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frames uint8 (N, H, W, C) -> (anomaly_map float32 (N, H, W), score float32 (N,)), in input order."""
        ...

    def free_slots(self) -> int:
        """Batches that `submit` takes now without blocking."""
        ...

    def submit(self, frames: np.ndarray) -> Ticket:
        """Start one batch (1..max_batch frames) and return at once; InFlightError when no slot is free."""
        ...

    def collect(self, ticket: Ticket) -> tuple[np.ndarray, np.ndarray]:
        """Wait for that batch and return its (anomaly_map, score); re-raises the batch's own error."""
        ...

    def close(self) -> None: ...


def open_backend(bundle: Bundle, name: BackendName = "onnxruntime", *, threads: int = 0, max_batch: int = 8, **options) -> Backend:
    """Build the named backend for a verified bundle. threads=0 lets the backend pick (the usable cores);
    ONNX Runtime takes spin=True to let its idle threads busy-wait (off by default, see edge/backends/ort.py)."""
    if name == "onnxruntime":
        from edge.backends.ort import OrtBackend

        return OrtBackend(bundle, threads=threads, max_batch=max_batch, **options)
    if name == "tensorrt":
        from edge.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(bundle, max_batch=max_batch, **options)
    if name == "torch-cuda":
        from edge.backends.torch_cuda import TorchCudaBackend

        return TorchCudaBackend(bundle, max_batch=max_batch, **options)
    raise ValueError(f"backend {name!r} is unknown; use one of onnxruntime, tensorrt, torch-cuda")
