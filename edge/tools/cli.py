"""`ssae edge bench`, `demo` and `fp16-check`: the tools (see edge/cli.py). Each parses and calls one function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from edge.errors import fail, known_errors
from edge.tools.bench_defaults import DEFAULTS


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _out(line: str) -> None:
    print(line, flush=True)


def bench(
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Bundle to time; default: an untrained default model (timing does not depend on weights).")] = None,
    size: Annotated[int, typer.Option("--size", min=16, help="Input size of the bundle built when --bundle is not given.")] = 256,
    frames: Annotated[int, typer.Option("--frames", min=50, help="Frames in the end-to-end video.")] = DEFAULTS.frames,
    latency_frames: Annotated[int, typer.Option("--latency-frames", min=20, help="Frames in the paced latency run.")] = DEFAULTS.latency_frames,
    measure: Annotated[float, typer.Option("--measure-s", min=0.1, help="Seconds per batch size in the raw timing.")] = DEFAULTS.measure_s,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=20, help="Rounds; each times raw right before every daemon run, and all are reported.")] = DEFAULTS.rounds,
    tuned: Annotated[bool, typer.Option("--tuned/--no-tuned", help="Also run the daemon at raw's best batch and spin setting, beside the shipped defaults.")] = True,
    example: Annotated[list[Path] | None, typer.Option("--example", help="Also run an example config's daemon settings on the video, e.g. configs/edge/line.example.toml; repeatable.")] = None,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="The paced capture->publish latency run.")] = True,
    stages: Annotated[bool, typer.Option("--stages/--no-stages", help="CPU time per frame of each stage, and spinning beside a busy process.")] = True,
    only_stages: Annotated[bool, typer.Option("--only-stages", help="Only the per-stage costs (a minute): no daemon runs; prints their table.")] = False,
    work: Annotated[Path, typer.Option("--work", help="Folder for the bundle, videos, configs and daemon logs.")] = Path("bench-out/edge"),
    write: Annotated[Path | None, typer.Option("--write", help="Also replace the 'Edge daemon' section of this file (e.g. BENCHMARKS.md).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures as JSON here.")] = None,
) -> None:
    """Time the daemon against raw ONNX Runtime on this machine; prints a markdown block for BENCHMARKS.md.

    Measures raw throughput per batch (ONNX Runtime's threads spinning and not), the daemon's end-to-end throughput
    from an MJPG video to a subscriber process as a ratio of raw, per round: as shipped (quick mode, every default)
    and tuned (and any --example config); p50/p99 capture->publish latency in a paced run, the daemon's peak RSS, and
    what each stage costs per frame.
    """
    import msgspec

    from edge.tools.bench import run_bench
    from edge.tools.bench_report import format_markdown, format_stages, write_section

    if only_stages and write is not None:
        raise fail("--write replaces the whole 'Edge daemon' section, which --only-stages does not measure; drop one of them")
    with known_errors():
        for path in example or []:
            if not path.is_file():
                raise fail(f"--example {path}: no such config file; pass one of configs/edge/*.toml")
        command = "ssae edge bench" + "".join(f" {a}" for a in sys.argv[3:]) if sys.argv[1:3] == ["edge", "bench"] else "ssae edge bench"
        result = run_bench(bundle=bundle, work=work, size_px=size, frames=frames, latency_frames=latency_frames, measure_s=measure,
                           rounds=rounds, tuned=tuned, examples=list(example or []), latency=latency, stages=stages, only_stages=only_stages,
                           command=command, progress=_err)
        markdown = format_stages(result.stages) if only_stages else format_markdown(result)
        if write is not None:
            write_section(write, markdown)
        if json_out is not None:
            json_out.write_bytes(msgspec.json.encode(result))
    _out(markdown)


def demo(
    work: Annotated[Path, typer.Option("--work", help="Folder for the model copy, stills, video, daemon config and log.")] = Path("demo-run"),
    train: Annotated[bool, typer.Option("--train", help="Train the demo model here (minutes) instead of using the shipped one.")] = False,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Use this bundle (copied; its calibration is redone on demo parts).")] = None,
    frames: Annotated[int, typer.Option("--frames", min=4, help="Parts in the demo video.")] = 120,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="With --train: training steps.")] = None,
    budget: Annotated[float | None, typer.Option("--budget-min", min=0, help="With --train: stop training after this many minutes.")] = None,
) -> None:
    """Run the product end to end, offline, and stop with a summary (what `make demo` runs).

    Model (shipped, trained here, or given), calibration on good and defective parts, a video of parts, the daemon
    on it and a tap printing each verdict against the defect planted; then frames, defects found vs planted, fps.
    """
    import msgspec

    from edge.tools.demo import DemoOptions, format_summary, run_demo

    if train and bundle is not None:
        raise fail("--train and --bundle exclude each other: train a model here, or bring one")
    opts = DemoOptions(frames=frames)
    if steps is not None:
        opts = msgspec.structs.replace(opts, train_steps=steps)
    if budget is not None:
        opts = msgspec.structs.replace(opts, train_budget_min=budget)
    with known_errors():
        summary = run_demo(work, opts, bundle="train" if train else (bundle or "shipped"), emit=_out, warn=_err)
    _out(format_summary(summary))


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
        from edge.files import atomic_write_bytes
        from edge.tools.fp16_check import check_bundle, format_result

        ops = tuple(op.strip() for op in keep_fp32.split(",") if op.strip()) if keep_fp32 else ()
        result = check_bundle(load_bundle(bundle), data, threshold=threshold, keep_fp32_ops=ops, threads=threads)
        print(format_result(result))
        if json_out is not None:
            atomic_write_bytes(json_out, msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")
    if not result.passed:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
    app.command("demo")(demo)
    app.command("fp16-check")(fp16_check)
