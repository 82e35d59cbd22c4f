"""`ssae edge build-engine`: a TensorRT engine for this GPU (see edge/cli.py).

It imports its GPU tooling inside the command, so `ssae edge --help` runs anywhere; a box
without TensorRT gets one line naming what to install (exit 2), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge.errors import UserError, known_errors


def build_engine(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder (model.onnx + manifest.json); the engine goes to BUNDLE/engines/.")],
    fp16: Annotated[bool, typer.Option("--fp16/--fp32", help="Let TensorRT run layers in FP16 (check first: `ssae edge fp16-check`).")] = True,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, max=1024, help="Largest batch the engine takes (the daemon's max_batch).")] = 8,
    workspace_mb: Annotated[int, typer.Option("--workspace-mb", min=16, help="Scratch memory TensorRT may use while choosing kernels.")] = 1024,
    in_flight: Annotated[int, typer.Option("--in-flight", min=1, max=8, help="Batches in flight in the daemon: one optimisation profile each.")] = 2,
    opt_batch: Annotated[int | None, typer.Option("--opt-batch", min=1, help="Batch size to tune kernels for (default: --max-batch).")] = None,
    device: Annotated[int, typer.Option("--device", min=0, help="CUDA device index.")] = 0,
) -> None:
    """Build a TensorRT engine for this GPU from the bundle's ONNX and store it under BUNDLE/engines/.

    The engine is keyed by GPU, TensorRT version, precision, input shape and batch range; the timing
    cache in BUNDLE/engines/ makes later builds on the same GPU model faster.
    """
    with known_errors():
        from edge.backends.tensorrt import build_engine as build
        from edge.bundle import load_bundle

        if opt_batch is not None and opt_batch > max_batch:
            raise UserError(f"--opt-batch {opt_batch} exceeds --max-batch {max_batch}; pick a batch size within 1..{max_batch}")
        loaded = load_bundle(bundle)
        path, record = build(loaded, fp16=fp16, max_batch=max_batch, workspace_mb=workspace_mb, profiles=in_flight, opt_batch=opt_batch, device_index=device)
    key = record.key
    print(
        f"engine {path}: {key.gpu_name} (sm {key.compute_capability}), TensorRT {key.tensorrt_version}, {key.precision}, "
        f"batch 1..{key.max_batch}, built in {record.build_seconds:.0f} s"
    )


def register(app: typer.Typer) -> None:
    app.command("build-engine")(build_engine)
