"""`ssae edge demo` (what `make demo` runs): the whole product on a laptop in a few minutes, offline.

1. train     a small model on good synthetic parts (train/synthetic.py; the project's own generator)
             with the project's training loop, into <work>/bundle (reused on the next run)
2. calibrate its threshold on held-out good parts and labelled defects with the calibrate package,
             the way `ssae calibrate fit` does, stored in the bundle's manifest
3. video     <work>/parts.avi: a stream of good and defective parts (MJPG, as cv2.VideoWriter writes
             it) with the ground truth of every frame in <work>/ground_truth.json
4. run       the daemon (`python -m edge run <work>/demo.toml`, a child process, from
             configs/edge/demo.toml) and a tap (edge.client.subscriber) that prints each verdict against
             what was planted, until the video ends
5. summary   frames, defects found vs planted, false alarms, fps, latency

Images for training and calibration are JPEG-compressed at the video's quality, so the model and the
threshold see the same compression artefacts the daemon reads from the video.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np

from edge.errors import UserError
from edge.tools.demo_parts import TINY, DemoOptions, FrameTruth, write_stills, write_video
from edge.tools.toml_text import to_toml

__all__ = ["TINY", "DemoOptions", "DemoSummary", "format_summary", "run_demo", "to_toml"]

Emit = Callable[[str], None]
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = PROJECT_ROOT / "configs" / "edge" / "demo.toml"
SHIPPED_BUNDLE = PROJECT_ROOT / "demo" / "bundle"  # made by `ssae edge demo --train` (see demo/README.md)


class DemoSummary(msgspec.Struct, frozen=True, kw_only=True):
    frames_sent: int
    frames_received: int
    lost: int
    dropped: int
    planted: int
    found: int  # planted defects judged "defect"
    located: int  # of those, with a region overlapping the planted defect
    missed: int
    false_alarms: int  # good parts judged "defect"
    unknown: int
    fps: float
    latency_p50_ms: float
    image_threshold: float
    model: str  # where the model came from, in words
    daemon_exit: int


# ---------------------------------------------------------------------------------------------------
# Model and threshold.


def train_bundle(opts: DemoOptions, train_dir: Path, bundle: Path, progress: bool) -> float:
    """Train with the project's loop (train.loop.fit); returns seconds spent."""
    try:
        from train.config import load_config
        from train.loop import fit
    except ImportError as e:
        raise UserError(f"the demo trains its model and needs the training extra ({e}); run `make demo` or pip install -e '.[train]'") from e
    model = {"widths": list(opts.widths), "bottleneck_blocks": opts.bottleneck_blocks, "dilations": list(opts.dilations), "skip_levels": opts.skip_levels}
    cfg = load_config(None, None, steps=opts.train_steps, time_budget_min=opts.train_budget_min, seed=opts.seed,
                      checkpoint_every=max(1, opts.train_steps), model=model, warmup_steps=min(100, opts.train_steps // 4))
    started = time.perf_counter()
    fit(train_dir, bundle, cfg, progress=progress)
    return time.perf_counter() - started


def obtain_bundle(opts: DemoOptions, work: Path, train_dir: Path, *, source: str | Path, emit: Emit, progress: bool) -> tuple[Path, str]:
    """<work>/bundle from `source`: "shipped" (demo/bundle in the project), "train", or a bundle folder.

    The bundle is copied, never used in place: calibration writes into its manifest. A trained one is
    reused by the next run with the same training options.
    """
    from edge.bundle import load_bundle
    from edge.manifest import BundleError

    bundle, key_file = work / "bundle", work / "bundle.demo.json"
    if source == "train":
        key = json.dumps(opts.training_key(), sort_keys=True)
        if (bundle / "manifest.json").is_file() and key_file.is_file() and key_file.read_text() == key:
            try:
                load_bundle(bundle)
                emit(f"[1/5] model: reusing {bundle}, trained by an earlier demo run with the same options")
                return bundle, "trained by an earlier demo run"
            except BundleError as e:  # a damaged cache is retrained, not fatal
                emit(f"[1/5] model: cached {bundle} is unusable ({e}); training again")
        budget = f", at most {opts.train_budget_min:g} min" if opts.train_budget_min else ""
        emit(f"[1/5] model: training on {opts.train_images} good parts at {opts.size_px} px ({opts.train_steps} steps{budget}) ...")
        key_file.unlink(missing_ok=True)
        if bundle.exists():  # the demo's own copy, calibrated or damaged: `train fit` would refuse to replace it
            shutil.rmtree(bundle)
        seconds = train_bundle(opts, train_dir, bundle, progress)
        key_file.write_text(key)
        return bundle, f"trained here in {seconds / 60:.1f} min"
    origin = SHIPPED_BUNDLE if source == "shipped" else Path(source)
    try:
        load_bundle(origin)
    except BundleError as e:
        if source != "shipped":
            raise
        emit(f"[1/5] model: the shipped bundle {origin} is unusable ({e}); training one instead")
        return obtain_bundle(opts, work, train_dir, source="train", emit=emit, progress=progress)
    key_file.unlink(missing_ok=True)
    if bundle.exists():
        shutil.rmtree(bundle)
    shutil.copytree(origin, bundle, ignore=shutil.ignore_patterns("engines"))
    what = "the shipped demo model" if source == "shipped" else "the given bundle"
    steps = load_bundle(bundle).manifest.provenance.steps
    emit(f"[1/5] model: {what}, copied from {origin} ({steps} training steps; `--train` trains one here instead)")
    return bundle, f"{what} ({steps} training steps)"


def calibrate_bundle(opts: DemoOptions, bundle: Path, good_dir: Path, defect_dir: Path, masks_dir: Path, warn: Emit) -> float:
    """`ssae calibrate fit` on the demo's stills; returns the image threshold now in the manifest.

    Forced, with the refusals shown: a demo with a weak model (a short --train) should still run and
    let its summary tell how weak.
    """
    from calibrate.fit import FitOptions, fit_folders
    from calibrate.store import store_calibration

    kinds = sorted(p for p in defect_dir.iterdir() if p.is_dir())
    result, model_id = fit_folders(bundle, [good_dir], kinds, masks_dir,
                                   FitOptions(target_false_reject=opts.target_false_reject, force=True, progress=False))
    for w in result.warnings:
        warn(f"      calibration warning: {w}")
    store_calibration(bundle, result.calibration, model_id=model_id)
    return result.calibration.image_threshold


# ---------------------------------------------------------------------------------------------------
# Daemon and tap.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon_config(work: Path, bundle: Path, video: Path, endpoint: str) -> Path:
    """configs/edge/demo.toml with this run's paths and port (the file's other settings kept)."""
    from edge.daemon.config import config_from_dict, load_config

    if DEMO_CONFIG.is_file():
        raw = msgspec.to_builtins(load_config(DEMO_CONFIG))
    else:  # an installed package without the configs folder: the same essentials
        raw = {"name": "demo", "cameras": [{"id": "parts", "source": "", "queue": "all", "queue_size": 16}], "publish": {"mask": "raw"}}
    raw["bundle"] = str(bundle.resolve())
    camera = raw["cameras"][0]
    camera.update(source=str(video.resolve()), loop=False, queue="all")
    raw["cameras"] = [camera]
    raw["publish"].update(endpoints=[endpoint], wait_for_subscriber_s=60.0)
    raw.pop("archive", None)
    raw.pop("control", None)
    raw["metrics"] = {}
    cfg = config_from_dict(raw, origin=f"demo config from {DEMO_CONFIG}")
    path = work / "demo.toml"
    text = "# Written by `ssae edge demo` from configs/edge/demo.toml with this run's paths and port.\n" + to_toml(msgspec.to_builtins(cfg))
    path.write_text(text)
    load_config(path)  # what the daemon will read back must be what we meant
    return path


def mark(event, truth: dict[int, FrameTruth]) -> tuple[str, str]:
    """(outcome, annotation) of one frame against what was planted."""
    t = truth.get(event.header.seq)
    verdict = event.header.verdict
    if t is None:
        return "extra", "  (no such frame in the video)"
    if t.defect is None:
        return ("false_alarm", "  <- FALSE ALARM (good part)") if verdict == "defect" else ("ok", "")
    if verdict == "defect":
        return ("found", f"  <- caught: planted {t.defect}" + ("" if located(event, t) else " (region elsewhere)"))
    return "missed", f"  <- MISSED: planted {t.defect}"


def located(event, t: FrameTruth) -> bool:
    if t.box is None:
        return False
    x, y, w, h = t.box
    return any(r.x < x + w and x < r.x + r.w and r.y < y + h and y < r.y + r.h for r in event.header.regions)


def run_stream(config: Path, endpoint: str, truth: list[FrameTruth], work: Path, emit: Emit, warn: Emit) -> tuple[dict, list, object, int]:
    """Start the daemon, tap it until it exits, return (outcomes, events, tally, exit code)."""
    from edge.client.subscriber import FrameEvent, HealthEvent, HeartbeatLost, Subscriber
    from edge.client.tap import format_frame

    by_index = {t.index: t for t in truth}
    outcomes = {"ok": 0, "found": 0, "located": 0, "missed": 0, "false_alarm": 0, "unknown": 0, "extra": 0}
    events: list = []
    log_path = work / "daemon.log"
    with Subscriber(endpoint, first_heartbeat_s=60.0) as sub, open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "edge", "run", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + 600
            exited_at = None
            while time.monotonic() < deadline:
                event = sub.receive(timeout_s=0.2)
                if isinstance(event, FrameEvent):
                    events.append(event)
                    if event.header.verdict == "unknown":
                        outcomes["unknown"] += 1
                        emit(format_frame(event))
                        continue
                    outcome, note = mark(event, by_index)
                    outcomes[outcome] += 1
                    outcomes["located"] += outcome == "found" and located(event, by_index[event.header.seq])
                    emit(format_frame(event) + note)
                    if event.lost:
                        warn(f"warning: {event.lost} frame(s) lost before seq {event.header.seq}")
                elif isinstance(event, HealthEvent) and event.health.cameras and all(c.state == "failed" for c in event.health.cameras):
                    warn(f"warning: the camera failed: {event.health.cameras[0].last_error}")
                elif isinstance(event, HeartbeatLost) and proc.poll() is None:
                    warn(f"warning: no heartbeat for {event.silent_s:.1f} s")
                if proc.poll() is not None:
                    exited_at = exited_at or time.monotonic()
                    if len(events) >= len(truth) or time.monotonic() - exited_at > 1.5:
                        break  # everything arrived, or whatever was still in flight has had its time
        finally:
            if proc.poll() is None:
                proc.terminate()  # SIGTERM: drain and exit
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        tally = sub.tally()
    return outcomes, events, tally, proc.returncode


def run_demo(work: Path, opts: DemoOptions = DemoOptions(), *, bundle: str | Path = "shipped", emit: Emit = print, warn: Emit = print,
             progress: bool = True) -> DemoSummary:
    """bundle: "shipped" (the committed demo model), "train" (train one here) or a bundle folder."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if bundle != "train":  # parts are drawn at the size the given model takes
        from edge.manifest import BundleError, read_manifest

        try:
            opts = msgspec.structs.replace(opts, size_px=read_manifest(SHIPPED_BUNDLE if bundle == "shipped" else Path(bundle)).input.height_px)
        except BundleError:
            pass  # obtain_bundle reports it (or, for the shipped one, trains instead)
    train_dir, good_dir, defect_dir, masks_dir = write_stills(opts, work / "data")
    bundle, model = obtain_bundle(opts, work, train_dir, source=bundle, emit=emit, progress=progress)
    emit(f"[2/5] threshold: calibrating on {opts.calib_good} good and {opts.calib_defect} defective parts "
         f"(target false-reject {opts.target_false_reject:g}) ...")
    threshold = calibrate_bundle(opts, bundle, good_dir, defect_dir, masks_dir, warn)
    emit(f"      image threshold {threshold:.5g} written to {bundle / 'manifest.json'}")
    video = work / "parts.avi"
    truth = write_video(opts, video)
    (work / "ground_truth.json").write_bytes(msgspec.json.format(msgspec.json.encode(truth), indent=1))
    planted = sum(t.defect is not None for t in truth)
    emit(f"[3/5] video: {video} ({opts.frames} parts, {planted} with a planted defect)")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = daemon_config(work, bundle, video, endpoint)
    emit(f"[4/5] daemon: {sys.executable} -m edge run {config}  (log: {work / 'daemon.log'}); tap on {endpoint}:")
    outcomes, events, tally, code = run_stream(config, endpoint, truth, work, emit, warn)
    if code != 0:
        tail = (work / "daemon.log").read_text(errors="replace").strip().splitlines()[-3:]
        raise UserError(f"the daemon exited with code {code}: {' | '.join(tail)}; see {work / 'daemon.log'}")
    rx = [e.received_ns for e in events]
    fps = (len(rx) - 1) / ((rx[-1] - rx[0]) / 1e9) if len(rx) > 1 and rx[-1] > rx[0] else 0.0
    lat = [(e.header.publish_ns - e.header.capture_ns) / 1e6 for e in events]
    summary = DemoSummary(
        frames_sent=len(truth), frames_received=len(events), lost=tally.lost, dropped=tally.dropped, planted=planted,
        found=outcomes["found"], located=outcomes["located"], missed=outcomes["missed"], false_alarms=outcomes["false_alarm"],
        unknown=outcomes["unknown"], fps=fps, latency_p50_ms=float(np.median(lat)) if lat else 0.0, image_threshold=threshold,
        model=model, daemon_exit=code,
    )
    emit(f"[5/5] done in {time.perf_counter() - started:.0f} s")
    return summary


def format_summary(s: DemoSummary) -> str:
    return "\n".join([
        "",
        "summary",
        f"  frames       {s.frames_received} of {s.frames_sent} received (lost {s.lost}, dropped by the daemon {s.dropped})",
        f"  defects      {s.found} of {s.planted} planted found ({s.located} located by a region), {s.missed} missed",
        f"  good parts   {s.frames_sent - s.planted}: {s.false_alarms} false alarm(s)"
        + (f"; {s.unknown} frame(s) not judged" if s.unknown else ""),
        f"  speed        {s.fps:.1f} frames/s through the daemon; capture->publish p50 {s.latency_p50_ms:.0f} ms "
        "(the video is read as fast as inference allows, so frames wait in the queue)",
        f"  model        {s.model}; image threshold {s.image_threshold:.5g} (calibrated on demo parts)",
    ])
