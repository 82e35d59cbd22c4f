"""Commands of `ssae edge` for the NVIDIA path (see edge/cli.py): build-engine, fp16-check.

Both import their GPU or ONNX tooling inside the command, so `ssae edge --help` runs anywhere; a box
without TensorRT gets one line naming what to install (exit 2), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge.clitools import UserError, known_errors


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
        from edge.backend_tensorrt import build_engine as build
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


def fp16_check(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    data: Annotated[
        list[Path], typer.Argument(help="Images: files, folders, or a labelled test split (MVTec layout or good/ + defect folders).")
    ],
    threshold: Annotated[
        float | None, typer.Option("--threshold", min=0, help="Image threshold for verdicts (default: the bundle's calibration).")
    ] = None,
    keep_fp32: Annotated[
        str | None, typer.Option("--keep-fp32", help="Comma-separated ONNX op types to leave in FP32, e.g. 'ReduceMean,Pow'.")
    ] = None,
    threads: Annotated[int, typer.Option("--threads", min=0, help="ONNX Runtime threads (0: all cores).")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON here.")] = None,
) -> None:
    """Score images in FP32 and FP16 (ONNX Runtime, CPU) and say whether FP16 changes verdicts or AUROC.

    Exit 0 when FP16 is safe on these images, 1 when it flips a verdict or moves image AUROC, 2 on bad input.
    """
    with known_errors():
        import msgspec

        from edge.bundle import load_bundle
        from edge.fp16_check import check_bundle, format_result
        from edge.manifest import atomic_write_bytes

        ops = tuple(op.strip() for op in keep_fp32.split(",") if op.strip()) if keep_fp32 else ()
        result = check_bundle(load_bundle(bundle), data, threshold=threshold, keep_fp32_ops=ops, threads=threads)
        print(format_result(result))
        if json_out is not None:
            atomic_write_bytes(json_out, msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")
    if not result.passed:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.command("build-engine")(build_engine)
    app.command("fp16-check")(fp16_check)
