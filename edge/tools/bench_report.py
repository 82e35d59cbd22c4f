"""The edge benchmark's report: its BENCHMARKS.md section, with each figure against its target.

Kept apart from the measurement (edge/tools/bench.py) so a report can be rewritten from a saved JSON result.
"""

from __future__ import annotations

from pathlib import Path

from edge.tools.bench import LATENCY_TARGET_X, RATIO_TARGET, RSS_TARGET_MB, BenchResult


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def format_markdown(r: BenchResult) -> str:
    raw, tp, lat = r.raw, r.throughput, r.latency
    lat_limit = LATENCY_TARGET_X * raw.single_frame_ms
    rows = [
        ("Raw ONNX Runtime, best batch", f"{raw.best_fps:.1f} images/s (batch {raw.best_batch}; "
         + ", ".join(f"b{b} {v:.1f}" for b, v in raw.per_batch.items()) + ")", ""),
        ("Single-frame model time (batch 1, median)", f"{raw.single_frame_ms:.1f} ms", ""),
        ("Daemon end-to-end (video → capture → inference → post-processing → publish → subscriber process), "
         f"median of {len(r.rounds)} rounds",
         f"{tp.fps:.1f} images/s vs raw {r.median_round.raw_fps:.1f} in the same round = **{r.ratio:.3f} × raw** "
         f"({tp.frames} frames, lost {tp.lost}, dropped {tp.dropped}); rounds: "
         + ", ".join(f"{x.run.fps:.1f}/{x.raw_fps:.1f} = {x.ratio:.3f}" for x in r.rounds),
         f"≥ {RATIO_TARGET} × raw: {_mark(r.ratio >= RATIO_TARGET)}"),
        (f"Capture → publish latency, paced at {r.latency_pace_fps:.1f} fps", f"p50 {lat.latency_p50_ms:.1f} ms, p99 {lat.latency_p99_ms:.1f} ms",
         f"p99 ≤ 2 × single frame = {lat_limit:.1f} ms: {_mark(lat.latency_p99_ms <= lat_limit)}"),
        ("Throughput run latency (queue full by design)", f"p50 {tp.latency_p50_ms:.1f} ms, p99 {tp.latency_p99_ms:.1f} ms", "not a target"),
        ("Daemon peak RSS", f"{r.peak_rss_mb:.0f} MB (throughput run {tp.peak_rss_mb:.0f}, latency run {lat.peak_rss_mb:.0f})",
         f"≤ {RSS_TARGET_MB:.0f} MB: {_mark(r.peak_rss_mb <= RSS_TARGET_MB)}"),
    ]
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    return (
        "## Edge daemon\n\n"
        f"Command: `{r.command}`  \n"
        f"Machine: {r.cores} cores (`nproc`), {r.cpu}; ONNX Runtime {r.onnxruntime}, CPU execution provider; {r.date}  \n"
        f"Model: {r.size_px}×{r.size_px}, default `ModelConfig` (bundle `{Path(r.bundle).name}`); frames: synthetic parts "
        "(train/synthetic.py) in an MJPG video.\n\n"
        "| Measure | Result | Target |\n|---|---|---|\n" + table + "\n\n"
        "How: raw = `open_backend(...).infer` in a loop per batch size after warm-up; end-to-end = `python -m edge run` "
        "with queue `all` and `max_batch` = the best raw batch, counted at a subscriber in its own process over the "
        "steady state (the first frames, which warm ONNX Runtime up, excluded); each round times raw at that batch "
        "again right before its daemon run, and the ratio is that round's (the median round is reported); latency = `publish_ns - capture_ns` "
        "from the headers in a second run whose file source is paced to half the single-frame capacity with queue "
        "`latest`; RSS = the daemon process's `VmHWM` (peak resident set) polled from /proc.\n"
    )


def write_section(path: Path, markdown: str) -> None:
    """Replace the "## Edge daemon" section of BENCHMARKS.md (or append it), leaving the rest untouched."""
    from edge.files import atomic_write_bytes

    path = Path(path)
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Edge daemon"), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + markdown
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + markdown + ("\n" + tail if tail else "")
    atomic_write_bytes(path, new.encode())
