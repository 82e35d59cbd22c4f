"""ONNX Runtime on CPU: the embedded default."""

from __future__ import annotations

import os

import numpy as np

from edge.bundle import Bundle
from edge.manifest import BundleError


class OrtBackend:
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, *, threads: int = 0, max_batch: int = 8, providers: list[str] | None = None):
        import onnxruntime as ort  # edge boxes without it can still run `ssae edge --help`

        options = ort.SessionOptions()
        # Intra-op threads = cores given; one inter-op thread since the graph is a single chain.
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
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

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if frames.dtype != np.uint8 or frames.shape[1:] != self.shape:
            raise ValueError(f"frames must be uint8 (N, {', '.join(map(str, self.shape))}); got {frames.dtype} {frames.shape}")
        amap, score = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(frames)})
        return amap, score

    def close(self) -> None:
        self.session = None
