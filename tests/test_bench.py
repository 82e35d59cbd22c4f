"""Pieces of `ssae edge bench` on tiny inputs: raw timing, the subscriber process, the report and its section."""

from __future__ import annotations

import multiprocessing

import msgspec
import pytest
from wirepub import WirePublisher

from edge.tools.bench import BenchResult, RawResult, Round, RunResult, SinkRecord, make_frames, measure_raw, run_sink, write_video
from edge.tools.bench_report import format_markdown, write_section


def test_measure_raw_on_tiny_bundle(tiny_bundle):
    raw = measure_raw(tiny_bundle, make_frames(4, 32), batches=(1, 4), measure_s=0.05)
    assert set(raw.per_batch) == {1, 4} and all(v > 0 for v in raw.per_batch.values())
    assert raw.best_fps == max(raw.per_batch.values()) and raw.single_frame_ms > 0


def test_video_is_readable(tmp_path):
    import cv2

    path = write_video(tmp_path / "v.avi", make_frames(5, 32))
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 5


def test_sink_process_records_every_frame(tmp_path):
    out = tmp_path / "sink.msgpack"
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    with WirePublisher() as pub:
        sink = ctx.Process(target=run_sink, args=(pub.endpoint, 5, str(out), stop, 20.0), daemon=True)
        sink.start()
        try:
            pub.wait_for_subscribers(2, timeout_s=30)
            for seq in (0, 1, 2, 5, 6):
                pub.frame("cam0", seq, dropped=2 if seq == 5 else 0)
            sink.join(timeout=30)
        finally:
            stop.set()
            sink.join(timeout=5)
            if sink.is_alive():
                sink.terminate()
    rec = msgspec.msgpack.decode(out.read_bytes(), type=SinkRecord)
    assert rec.seq == [0, 1, 2, 5, 6] and rec.dropped == 2 and rec.lost == 0 and not rec.error


def run_at(fps: float) -> RunResult:
    return RunResult(frames=600, lost=0, dropped=0, fps=fps, latency_p50_ms=60.0, latency_p99_ms=90.0, peak_rss_mb=180.0, exit_code=0)


def result(ratio_fps=19.0) -> BenchResult:
    run = run_at(ratio_fps)
    return BenchResult(command="ssae edge bench", date="2026-01-01T00:00+00:00", cpu="Test CPU", cores=2, onnxruntime="1.x",
                       bundle="/tmp/b", size_px=256, raw=RawResult(per_batch={1: 15.0, 2: 20.0}, best_batch=2, best_fps=20.0,
                                                                   single_frame_ms=66.0, threads=2),
                       rounds=[Round(raw_fps=20.0, run=run)], latency=run, latency_pace_fps=7.5)


def test_ratio_is_the_median_rounds_own():
    # Each round divides by the raw figure timed right before it: a drifting machine cancels out.
    r = msgspec.structs.replace(result(), rounds=[Round(raw_fps=40.0, run=run_at(30.0)), Round(raw_fps=30.0, run=run_at(29.0)),
                                                  Round(raw_fps=20.0, run=run_at(19.8))])
    assert r.ratio == pytest.approx(0.966, abs=1e-3) and r.throughput.fps == 29.0
    assert "29.0/30.0 = 0.967" in format_markdown(r) and "median of 3 rounds" in format_markdown(r)


def test_markdown_marks_targets():
    text = format_markdown(result(19.0))
    assert text.startswith("## Edge daemon\n") and "0.950 × raw" in text and "**missed**" not in text
    assert "**missed**" in format_markdown(result(10.0))


def test_write_section_replaces_only_its_own(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Quality\n\nq table\n\n## Edge daemon\n\nold\n\n## GPU\n\ng table\n")
    write_section(path, "## Edge daemon\n\nnew\n")
    text = path.read_text()
    assert "old" not in text and "new" in text and "q table" in text and "g table" in text
    assert text.index("## Quality") < text.index("## Edge daemon") < text.index("## GPU")
    fresh = tmp_path / "NEW.md"
    write_section(fresh, "## Edge daemon\n\nx\n")
    assert fresh.read_text().startswith("# Benchmarks\n\n## Edge daemon")


def test_bench_end_to_end_on_tiny_bundle(tiny_bundle, tmp_path):
    from edge.tools.bench import run_bench

    result = run_bench(bundle=tiny_bundle, work=tmp_path, frames=60, latency_frames=20, measure_s=0.1, rounds=2, progress=lambda line: None)
    assert len(result.rounds) == 2 and all(r.raw_fps > 0 for r in result.rounds)
    assert result.size_px == 32 and result.raw.best_fps > 0
    tp = result.throughput
    assert tp.frames == 60 and tp.lost == 0 and tp.dropped == 0 and tp.exit_code == 0  # queue "all": every frame
    assert tp.fps > 0 and 0 < tp.peak_rss_mb < 2000
    assert result.latency.frames >= 1 and result.latency.latency_p99_ms >= result.latency.latency_p50_ms > 0
    assert "## Edge daemon" in format_markdown(result)


def test_result_encodes_as_json():
    from edge.tools.bench import summarise

    rec = SinkRecord(seq=list(range(30)), capture_ns=[i * 10**7 for i in range(30)], publish_ns=[i * 10**7 + 5 * 10**6 for i in range(30)],
                     received_ns=[i * 10**7 + 6 * 10**6 for i in range(30)], lost=0, dropped=0)
    run = summarise(rec, 100.0, 0)
    assert run.fps == pytest.approx(100.0) and run.latency_p50_ms == pytest.approx(5.0)
    r = result()
    decoded = msgspec.json.decode(msgspec.json.encode(msgspec.structs.replace(r, rounds=[Round(raw_fps=120.0, run=run)])))
    assert decoded["rounds"][0]["run"]["fps"] == pytest.approx(100.0)


def test_peak_rss_is_the_childs_not_the_parents():
    import subprocess
    import sys

    import numpy as np

    from edge.tools.bench import wait_with_rss

    ballast = np.ones(200 * 2**20, np.uint8)  # the parent holds 200 MB; the child must not be charged for it
    code = "import numpy as np, time; a = np.ones(60 * 2**20, np.uint8); time.sleep(0.5)"
    rc, peak_mb = wait_with_rss(subprocess.Popen([sys.executable, "-c", code]), timeout_s=60)
    assert rc == 0 and 60 <= peak_mb < 180, peak_mb
    del ballast
