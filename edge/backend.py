"""Inference backends share one shape: uint8 frames in, anomaly maps and scores out.

Every backend runs the same exported graph (normalisation and post-processing inside it), so the
numbers on the line match training and calibration. GPU libraries are imported inside their backend.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np

from edge.bundle import Bundle

BackendName = Literal["onnxruntime", "tensorrt", "torch-cuda"]


class Backend(Protocol):
    name: str
    max_batch: int

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frames uint8 (N, H, W, C) -> (anomaly_map float32 (N, H, W), score float32 (N,))."""
        ...

    def close(self) -> None: ...


def open_backend(bundle: Bundle, name: BackendName = "onnxruntime", *, threads: int = 0, max_batch: int = 8, **options) -> Backend:
    """Build the named backend for a verified bundle. threads=0 lets the backend pick (all cores)."""
    if name == "onnxruntime":
        from edge.backend_ort import OrtBackend

        return OrtBackend(bundle, threads=threads, max_batch=max_batch, **options)
    if name == "tensorrt":
        from edge.backend_tensorrt import TensorRTBackend

        return TensorRTBackend(bundle, max_batch=max_batch, **options)
    if name == "torch-cuda":
        from edge.backend_torch_cuda import TorchCudaBackend

        return TorchCudaBackend(bundle, max_batch=max_batch, **options)
    raise ValueError(f"backend {name!r} is unknown; use one of onnxruntime, tensorrt, torch-cuda")
