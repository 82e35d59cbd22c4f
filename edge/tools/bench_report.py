"""The edge benchmark's report: its BENCHMARKS.md section, with each figure against its target.

Kept apart from the measurement (edge/tools/bench.py) so a report can be rewritten from a saved JSON result.
"""

from __future__ import annotations

from pathlib import Path

from edge.tools.bench import LATENCY_TARGET_X, RATIO_TARGET, RSS_TARGET_MB, BenchResult
from edge.tools.bench_stages import StageReport


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _per_batch(values: dict[int, float]) -> str:
    return ", ".join(f"b{b} {v:.1f}" for b, v in values.items())


def _setup_row(r: BenchResult, name: str, how: str) -> tuple[str, str, str]:
    trials = r.trials(name)
    low, median, high = r.spread(name)
    frames = ", ".join(f"{t.run.frames} frames lost {t.run.lost} dropped {t.run.dropped}" for t in trials[:1])
    rounds = ", ".join(f"{t.run.fps:.1f}/{t.raw_fps:.1f} = {t.ratio:.3f}" for t in trials)
    result = f"min **{low:.3f}** / median {median:.3f} / max {high:.3f} × raw; rounds (daemon/raw images/s): {rounds} ({frames})"
    return f"Daemon **{name}**, {len(trials)} round(s): {how}", result, f"≥ {RATIO_TARGET} × raw in every round: {_mark(low >= RATIO_TARGET)}"


def format_markdown(r: BenchResult) -> str:
    raw = r.raw
    rows = [
        ("Raw ONNX Runtime, best", f"{raw.best_fps:.1f} images/s (batch {raw.best_batch}, spin {'on' if raw.best_spin else 'off'}, {raw.threads} threads; "
         f"spin off: {_per_batch(raw.per_batch)}" + (f"; spin on: {_per_batch(raw.per_batch_spin)}" if raw.per_batch_spin else "") + ")", ""),
        ("Single-frame model time (batch 1, median)", f"{raw.single_frame_ms:.1f} ms", ""),
    ]
    rows += [_setup_row(r, s.name, s.how) for s in r.setups]
    if r.latency is not None:
        lat, limit = r.latency, LATENCY_TARGET_X * raw.single_frame_ms
        rows.append((f"Capture → publish latency, paced at {r.latency_pace_fps:.1f} fps (tuned settings, queue latest)",
                     f"p50 {lat.latency_p50_ms:.1f} ms, p99 {lat.latency_p99_ms:.1f} ms", f"p99 ≤ 2 × single frame = {limit:.1f} ms: {_mark(lat.latency_p99_ms <= limit)}"))
    if r.setups and r.rounds:
        shipped = sorted(r.trials(r.setups[0].name), key=lambda t: t.ratio)[len(r.rounds) // 2].run
        rows.append((f"Throughput run latency ({r.setups[0].name}, median round; queue full by design)",
                     f"p50 {shipped.latency_p50_ms:.1f} ms, p99 {shipped.latency_p99_ms:.1f} ms", "not a target"))
        rows.append(("Daemon peak RSS", f"{r.peak_rss_mb:.0f} MB over all runs", f"≤ {RSS_TARGET_MB:.0f} MB: {_mark(r.peak_rss_mb <= RSS_TARGET_MB)}"))
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    text = (
        "## Edge daemon\n\n"
        f"Command: `{r.command}`  \n"
        f"Machine: {r.cores} cores (`nproc`), {r.cpu}; ONNX Runtime {r.onnxruntime}, CPU execution provider; {r.date}  \n"
        f"Model: {r.size_px}×{r.size_px}, default `ModelConfig` (bundle `{Path(r.bundle).name}`); frames: synthetic parts "
        "(train/synthetic.py) in an MJPG video" + (f"; judged with {r.judging}" if r.judging else "") + ".\n\n"
        "| Measure | Result | Target |\n|---|---|---|\n" + table + "\n\n"
        "How: raw = `open_backend(...).infer` in a loop per batch size after warm-up, with ONNX Runtime's threads spinning (its "
        "own default) and not (the daemon's default); the best of all is the ceiling. End-to-end = `python -m edge run` on the "
        "video, counted at a subscriber in its own process that reads and decodes every frame and mask, over the steady state "
        "(the first frames, which warm ONNX Runtime up, excluded). In every round each set-up gets its own raw timing at the "
        "best batch and spin setting right before its daemon run, and its ratio is that round's; every round is listed, with "
        "min / median / max. Latency = `publish_ns - capture_ns` from the headers in a run whose file source is paced to half "
        "the single-frame capacity with queue `latest`; RSS = the daemon process's `VmHWM` (peak resident set) polled from /proc.\n"
    )
    if r.stages is not None:
        text += "\n" + format_stages(r.stages)
    return text


def format_stages(s: StageReport) -> str:
    rows = [(c.stage, c.cpu_ms, c.wall_ms, c.note) for c in s.stages]
    table = "\n".join(f"| {stage} | {cpu:.3f} | {wall:.3f} | {100 * cpu / s.model_cpu_ms:.2f} % | {note} |" for stage, cpu, wall, note in rows)
    text = (
        "### Which stage costs what per frame\n\n"
        f"CPU time per frame of each stage on its own (edge/tools/bench_stages.py), {s.size_px}×{s.size_px}, against the "
        f"model's {s.model_cpu_ms:.1f} ms CPU per frame (wall {s.model_wall_ms:.1f} ms) at the daemon's default batch:\n\n"
        "| Stage | CPU ms | wall ms | of the model's CPU | Note |\n|---|---|---|---|---|\n" + table + "\n"
        f"| **one frame besides the model** (decode, fit, judge a defect, raw mask, publish + subscriber) | **{s.overhead_cpu_ms:.3f}** | | "
        f"**{100 * s.overhead_cpu_ms / s.model_cpu_ms:.2f} %** | |\n"
    )
    if s.spin is not None:
        p = s.spin
        text += (
            f"\nONNX Runtime alone at batch {p.batch}, {p.threads} threads, images/s: "
            + ", ".join(f"{k} {v:.1f}" for k, v in p.fps.items())
            + " (\"busy\": beside one process running a Python loop).\n"
        )
    return text


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
