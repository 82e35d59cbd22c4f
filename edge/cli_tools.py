"""Commands of `ssae edge` for this area (see edge/cli.py): tap, bench, demo. Each parses and calls one function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from edge.bench_defaults import DEFAULTS
from edge.clitools import fail, known_errors


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _out(line: str) -> None:
    print(line, flush=True)


def tap(
    endpoints: Annotated[list[str], typer.Argument(help="Daemon publish endpoint(s), e.g. tcp://10.0.0.5:5555.")],
    save: Annotated[
        Path | None,
        typer.Option(
            "--save",
            help="Folder for defect evidence: per defect frame <camera>-<seq>.png (the defect mask in red with region "
            "boxes and peak scores, on the model-input grid; the wire carries no camera image) and <camera>-<seq>.json "
            "(the header).",
        ),
    ] = None,
    frames: Annotated[int | None, typer.Option("--frames", min=1, help="Stop after this many frames.")] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0.1, help="Give up after this many seconds without any message; exit 1.")
    ] = None,
    camera: Annotated[list[str] | None, typer.Option("--camera", help="Only these cameras (repeat); default all.")] = None,
    no_health: Annotated[bool, typer.Option("--no-health", help="Do not print or watch heartbeats.")] = False,
    client_key: Annotated[
        Path | None, typer.Option("--client-key", help="CURVE: this client's NAME.key_secret (from `ssae edge keys`).")
    ] = None,
    server_key: Annotated[Path | None, typer.Option("--server-key", help="CURVE: the daemon's public NAME.key.")] = None,
) -> None:
    """Print one line per frame (camera, seq, verdict, score, threshold, capture->receive latency, regions).

    Warns on stderr about frames lost between daemon and tap (sequence gaps not reported as drops) and about
    missing heartbeats (3 periods of silence). Ctrl-C stops and prints a summary.
    """
    from edge.tap import format_summary, run_tap

    with known_errors():
        configure = _curve_hook(client_key, server_key)
        try:
            summary = run_tap(endpoints, save_dir=save, frames=frames, timeout_s=timeout, cameras=camera or None,
                              health=not no_health, configure=configure, emit=_out, warn=_err)
        except ValueError as e:  # a malformed endpoint
            raise fail(str(e)) from None
    _err(format_summary(summary))
    if summary.stopped == "timeout":
        raise fail(f"no message for {timeout:g} s from {', '.join(endpoints)}; is the daemon running and publishing there?", code=1)


def _curve_hook(client_key: Path | None, server_key: Path | None):
    """A socket hook for CURVE when both key files are given (loaded now, so a bad file fails before connecting)."""
    if client_key is None and server_key is None:
        return None
    if client_key is None or server_key is None:
        raise fail("CURVE needs both --client-key (your NAME.key_secret) and --server-key (the daemon's NAME.key)")
    from edge.security import load_key_pair, load_public_key
    from edge.subscriber import curve_client

    keys = load_key_pair(client_key)
    return curve_client(load_public_key(server_key), keys.public, keys.secret)


def bench(
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Bundle to time; default: an untrained default model (timing does not depend on weights).")] = None,
    size: Annotated[int, typer.Option("--size", min=16, help="Input size of the bundle built when --bundle is not given.")] = 256,
    frames: Annotated[int, typer.Option("--frames", min=50, help="Frames in the end-to-end video.")] = DEFAULTS.frames,
    latency_frames: Annotated[int, typer.Option("--latency-frames", min=20, help="Frames in the paced latency run.")] = DEFAULTS.latency_frames,
    measure: Annotated[float, typer.Option("--measure-s", min=0.1, help="Seconds per batch size in the raw timing.")] = DEFAULTS.measure_s,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=20, help="Raw-then-daemon rounds; the median round's ratio is reported.")] = DEFAULTS.rounds,
    work: Annotated[Path, typer.Option("--work", help="Folder for the bundle, videos, configs and daemon logs.")] = Path("bench-out/edge"),
    write: Annotated[Path | None, typer.Option("--write", help="Also replace the 'Edge daemon' section of this file (e.g. BENCHMARKS.md).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures as JSON here.")] = None,
) -> None:
    """Time the daemon against raw ONNX Runtime on this machine; prints a markdown block for BENCHMARKS.md.

    Measures raw throughput per batch, the daemon's end-to-end throughput from an MJPG video to a subscriber
    process (as a ratio of raw), p50/p99 capture->publish latency in a paced run, and the daemon's peak RSS.
    """
    import msgspec

    from edge.bench import format_markdown, run_bench, write_section

    with known_errors():
        command = "ssae edge bench" + "".join(f" {a}" for a in sys.argv[3:]) if sys.argv[1:3] == ["edge", "bench"] else "ssae edge bench"
        result = run_bench(bundle=bundle, work=work, size_px=size, frames=frames, latency_frames=latency_frames, measure_s=measure,
                           rounds=rounds, command=command, progress=_err)
        markdown = format_markdown(result)
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

    from edge.demo import DemoOptions, format_summary, run_demo

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


def register(app: typer.Typer) -> None:
    app.command("tap")(tap)
    app.command("bench")(bench)
    app.command("demo")(demo)
