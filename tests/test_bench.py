"""Pieces of `ssae edge bench` on tiny inputs: raw timing, the subscriber process, the report and its section."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import msgspec
import pytest
from wirepub import WirePublisher

from edge.tools.bench import BenchResult, RawResult, Round, RunResult, SinkRecord, Trial, make_frames, measure_raw, run_sink, write_video
from edge.tools.bench_report import format_markdown, write_section
from edge.tools.bench_setups import Setup

ROOT = Path(__file__).resolve().parents[1]


def test_measure_raw_on_tiny_bundle(tiny_bundle):
    raw = measure_raw(tiny_bundle, make_frames(4, 32), batches=(1, 4), measure_s=0.05)
    assert set(raw.per_batch) == {1, 4} and all(v > 0 for v in raw.per_batch.values())
    assert set(raw.per_batch_spin) == {1, 4} and all(v > 0 for v in raw.per_batch_spin.values())  # ONNX Runtime's own default too
    best = raw.per_batch_spin if raw.best_spin else raw.per_batch
    assert raw.best_fps == max(best.values()) == max(*raw.per_batch.values(), *raw.per_batch_spin.values()) and raw.single_frame_ms > 0


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


SETUPS = [Setup(name="shipped", how="quick mode"), Setup(name="tuned", how="config")]


def result(ratio_fps=19.0) -> BenchResult:
    trials = {"shipped": Trial(raw_fps=20.0, run=run_at(ratio_fps)), "tuned": Trial(raw_fps=20.0, run=run_at(20.0))}
    return BenchResult(command="ssae edge bench", date="2026-01-01T00:00+00:00", cpu="Test CPU", cores=2, onnxruntime="1.x",
                       bundle="/tmp/b", size_px=256, raw=RawResult(per_batch={1: 15.0, 2: 20.0}, best_batch=2, best_fps=20.0,
                                                                   single_frame_ms=66.0, threads=2),
                       setups=SETUPS, rounds=[Round(trials=trials)], latency=run_at(19.0), latency_pace_fps=7.5)


def rounds_of(*pairs: tuple[float, float]) -> list[Round]:
    """Rounds where shipped ran at (daemon fps, raw fps) and tuned matched raw."""
    return [Round(trials={"shipped": Trial(raw_fps=raw, run=run_at(fps)), "tuned": Trial(raw_fps=raw, run=run_at(raw))}) for fps, raw in pairs]


def test_every_round_is_reported_with_its_own_ratio_and_the_spread():
    # Each round divides by the raw figure timed right before it: a drifting machine cancels out.
    r = msgspec.structs.replace(result(), rounds=rounds_of((30.0, 40.0), (29.0, 30.0), (19.8, 20.0)))
    low, median, high = r.spread("shipped")
    assert (low, median, high) == pytest.approx((0.75, 0.966, 0.99), abs=1e-3)
    text = format_markdown(r)
    assert "30.0/40.0 = 0.750" in text and "29.0/30.0 = 0.967" in text and "19.8/20.0 = 0.990" in text
    assert "min **0.750** / median 0.967 / max 0.990" in text and "Daemon **shipped**, 3 round(s)" in text and "Daemon **tuned**, 3 round(s)" in text


def test_a_target_is_met_only_when_every_round_meets_it():
    good = msgspec.structs.replace(result(), rounds=rounds_of((19.5, 20.0), (19.2, 20.0), (19.9, 20.0)))
    assert "**missed**" not in format_markdown(good)
    one_bad = msgspec.structs.replace(result(), rounds=rounds_of((19.5, 20.0), (17.0, 20.0), (19.9, 20.0)))  # median 0.975, one round 0.85
    shipped_row = next(line for line in format_markdown(one_bad).splitlines() if "Daemon **shipped**" in line)
    assert "median 0.975" in shipped_row and "every round: **missed**" in shipped_row


def test_markdown_marks_targets():
    text = format_markdown(result(19.0))
    assert text.startswith("## Edge daemon\n") and "0.950" in text and "**missed**" not in text
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

    result = run_bench(bundle=tiny_bundle, work=tmp_path, frames=60, latency_frames=20, measure_s=0.1, rounds=2, stages=False, progress=lambda line: None)
    assert [s.name for s in result.setups] == ["shipped", "tuned"] and len(result.rounds) == 2
    assert result.size_px == 32 and result.raw.best_fps > 0
    for setup in ("shipped", "tuned"):
        for trial in result.trials(setup):
            run = trial.run
            assert trial.raw_fps > 0 and run.frames == 60 and run.lost == 0 and run.dropped == 0 and run.exit_code == 0  # queue "all": every frame
            assert run.fps > 0 and 0 < run.peak_rss_mb < 2000
    assert result.latency.frames >= 1 and result.latency.latency_p99_ms >= result.latency.latency_p50_ms > 0
    assert "## Edge daemon" in format_markdown(result)
    assert "daemon edge: recipe default, bundle" in (tmp_path / "shipped.log").read_text()  # quick mode: no config file, every default
    assert "daemon bench: recipe default, bundle" in (tmp_path / "tuned.log").read_text()


def test_bench_times_an_example_config_and_judges_an_uncalibrated_bundle_on_a_copy(tiny_bundle, tmp_path):
    from edge.manifest import read_manifest
    from edge.tools.bench import run_bench

    demo = ROOT / "configs/edge/demo.toml"
    result = run_bench(bundle=tiny_bundle, work=tmp_path, frames=60, measure_s=0.05, rounds=1, tuned=False, examples=[demo], latency=False,
                       progress=lambda line: None)
    assert [s.name for s in result.setups] == ["shipped", "demo"] and result.latency is None
    for setup in ("shipped", "demo"):
        (trial,) = result.trials(setup)
        assert trial.run.frames == 60 and trial.run.lost == 0 and trial.run.dropped == 0
    # An uncalibrated bundle gets stand-in thresholds on a copy in the work folder; the one given is untouched.
    assert read_manifest(tiny_bundle).calibration is None
    copy = read_manifest(tmp_path / f"{tiny_bundle.name}-bench-thresholds").calibration
    assert copy is not None and "stand-in" in result.judging and f"{copy.image_threshold:.4g}" in result.judging
    names = [c.stage for c in result.stages.stages]
    assert {"decode", "judge (defect frame)", "mask encode raw", "mask encode png", "publish + subscriber (raw mask)"} <= set(names)
    assert all(c.cpu_ms >= 0 for c in result.stages.stages) and result.stages.model_cpu_ms > 0
    assert set(result.stages.spin.fps) == {"spin off", "spin on", "spin off + busy", "spin on + busy"}
    text = format_markdown(result)
    assert "Daemon **demo**" in text and "### Which stage costs what per frame" in text and "one frame besides the model" in text


def test_example_config_keeps_its_daemon_settings_and_drops_what_the_bench_cannot_use(tmp_path):
    from edge.daemon.config import load_config
    from edge.tools.bench_setups import example_config, write_toml

    line = ROOT / "configs/edge/line.example.toml"
    raw = example_config(line, tmp_path / "bundle", tmp_path / "v.avi", "tcp://127.0.0.1:5999")
    cfg, original = load_config(write_toml(tmp_path / "line.toml", raw)), load_config(line)
    assert (cfg.threads, cfg.spin, cfg.max_batch, cfg.batch_wait_ms) == (original.threads, original.spin, original.max_batch, original.batch_wait_ms)
    assert cfg.publish.mask == original.publish.mask and cfg.postprocess == original.postprocess
    assert cfg.publish.endpoints == ["tcp://127.0.0.1:5999"] and cfg.publish.wait_for_subscriber_s == 60
    assert cfg.archive is None and cfg.control is None and cfg.metrics.port is None and not cfg.security.curve
    (camera,) = cfg.cameras
    assert camera.queue == "all" and camera.queue_size == 32 and camera.source == str((tmp_path / "v.avi").resolve())


def test_result_encodes_as_json():
    from edge.tools.bench import summarise

    rec = SinkRecord(seq=list(range(30)), capture_ns=[i * 10**7 for i in range(30)], publish_ns=[i * 10**7 + 5 * 10**6 for i in range(30)],
                     received_ns=[i * 10**7 + 6 * 10**6 for i in range(30)], lost=0, dropped=0)
    run = summarise(rec, 100.0, 0)
    assert run.fps == pytest.approx(100.0) and run.latency_p50_ms == pytest.approx(5.0)
    r = result()
    decoded = msgspec.json.decode(msgspec.json.encode(msgspec.structs.replace(r, rounds=[Round(trials={"shipped": Trial(raw_fps=120.0, run=run)})])))
    assert decoded["rounds"][0]["trials"]["shipped"]["run"]["fps"] == pytest.approx(100.0)


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


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--only-stages", "--write", "B.md"], "--write replaces the whole 'Edge daemon' section, which --only-stages does not measure"),
        (["--example", "nope.toml"], "--example nope.toml: no such config file"),
    ],
)
def test_bench_cli_refuses_in_one_line(tmp_path, args, expected):
    from typer.testing import CliRunner

    from ssae import app

    args = [str(tmp_path / a) if a.endswith(".md") else a for a in args]
    done = CliRunner().invoke(app, ["edge", "bench", "--work", str(tmp_path), *args])
    assert done.exit_code == 2 and expected in done.output, done.output
    assert "Traceback" not in done.output and not (tmp_path / "B.md").exists()
