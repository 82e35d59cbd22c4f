"""Round trip with a real edge daemon: live calibration from its stream, apply over control, verdicts change
on the stream without a lost or dropped frame; foreign models and absent daemons are refused plainly."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from edge.client.control import send_request
from edge.client.subscriber import FrameEvent, Subscriber
from edge.files import sha256_file
from edge.manifest import Calibration, read_manifest, write_manifest
from edge.wire import ApplyThresholds, Status
from ssae import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
CAL = Calibration(image_threshold=1.0, pixel_threshold=1.0, method="test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uncalibrated_copy(tiny_bundle: Path, dest: Path) -> Path:
    shutil.copytree(tiny_bundle, dest)
    write_manifest(dest, msgspec.structs.replace(read_manifest(dest), calibration=None, history=[]))
    return dest


def foreign_copy(tiny_bundle: Path, dest: Path) -> Path:
    """The same network under another model id: a valid ONNX file whose bytes (hence sha256) differ."""
    import onnx

    shutil.copytree(tiny_bundle, dest)
    model = onnx.load(str(dest / "model.onnx"))
    model.doc_string = "a different model"
    onnx.save(model, str(dest / "model.onnx"))
    write_manifest(dest, msgspec.structs.replace(read_manifest(dest), model_id=sha256_file(dest / "model.onnx"), calibration=CAL))
    return dest


class Collector:
    """Every frame event from the stream, read on its own thread so that nothing waits while the CLI runs."""

    def __init__(self, endpoint: str):
        self.events: list[FrameEvent] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.sub = Subscriber(endpoint, health=False, rcvhwm=100_000)  # created here, used only by the thread
        self.thread = threading.Thread(name="collector", target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with self.sub:
            while not self.stop_event.is_set():
                event = self.sub.receive(timeout_s=0.1)
                if isinstance(event, FrameEvent):
                    with self.lock:
                        self.events.append(event)

    def snapshot(self) -> list[FrameEvent]:
        with self.lock:
            return list(self.events)

    def wait_for(self, predicate, timeout_s: float) -> list[FrameEvent]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            events = self.snapshot()
            if predicate(events):
                return events
            time.sleep(0.05)
        raise AssertionError(f"stream condition not met within {timeout_s} s ({len(self.snapshot())} frames)")

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)


@pytest.fixture
def daemon(tiny_bundle, tiny_dataset, tmp_path):
    with running_daemon(uncalibrated_copy(tiny_bundle, tmp_path / "bundle"), tiny_dataset, tmp_path) as running:
        yield running


@contextlib.contextmanager
def running_daemon(bundle: Path, tiny_dataset: Path, tmp_path: Path):
    """`ssae edge run` in a subprocess on the bundle, looping the 24 good training images; yields (bundle, pub, ctl, collector)."""
    pub, ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "line.toml"
    config.write_text(
        f'bundle = "{bundle}"\nthreads = 1\nmax_batch = 4\n'
        f'[[cameras]]\nid = "cam0"\nsource = "{tiny_dataset / "part" / "train" / "good"}"\nloop = true\nqueue = "all"\npace_fps = 150\n'
        f'[publish]\nendpoints = ["{pub}"]\nheartbeat_s = 0.5\nsndhwm = 100000\nwait_for_subscriber_s = 20\n'
        f'[control]\nendpoint = "{ctl}"\n'
    )
    collector = Collector(pub)  # subscribed before the daemon starts capturing: it sees seq 0 onwards
    proc = subprocess.Popen([sys.executable, "-m", "ssae", "edge", "run", str(config)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:  # ready when the control endpoint answers
            try:
                send_request(ctl, Status(), timeout_s=1.0)
                break
            except TimeoutError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"daemon did not come up: {proc.stderr.read() if proc.poll() is not None else 'timeout'}")
        yield bundle, pub, ctl, collector
    finally:
        collector.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        proc.stderr.close()


def test_live_calibrate_apply_and_verdicts_change_without_loss(daemon, tiny_bundle, tmp_path):
    bundle, pub, ctl, collector = daemon
    collector.wait_for(lambda ev: len(ev) >= 10, 20)
    assert {e.header.verdict for e in collector.snapshot()} == {"unknown"}  # uncalibrated

    foreign = foreign_copy(tiny_bundle, tmp_path / "foreign")
    refused = runner.invoke(app, ["calibrate", "live", pub, "--bundle", str(foreign), "--frames", "40", "--target-false-reject", "0.1", "--quiet"])
    assert refused.exit_code == 2 and "scores of one model say nothing about another" in refused.stderr

    # 40 scores back a 10 % false-reject rate at 95 % (29 needed).
    result = runner.invoke(app, ["calibrate", "live", pub, "--bundle", str(bundle), "--frames", "40", "--target-false-reject", "0.1", "--quiet", "--idle-timeout", "10"])
    assert result.exit_code == 0, result.stderr
    cal = read_manifest(bundle).calibration
    assert cal.method == "good-only-order-statistic" and cal.n_good == 40 and cal.source.startswith(f"live {pub}")
    assert {e.header.verdict for e in collector.snapshot()} == {"unknown"}  # nothing changes before apply

    mismatch = runner.invoke(app, ["calibrate", "apply", str(foreign), "--control", ctl])
    assert mismatch.exit_code == 2 and "runs model" in mismatch.stderr
    applied = runner.invoke(app, ["calibrate", "apply", str(bundle), "--control", ctl])
    assert applied.exit_code == 0, applied.stderr
    assert f"image threshold {cal.image_threshold:.6g}" in applied.stdout

    events = collector.wait_for(lambda ev: sum(e.header.verdict != "unknown" for e in ev) >= 30, 20)
    verdicts = [e.header.verdict for e in events]
    switch = next(i for i, v in enumerate(verdicts) if v != "unknown")
    assert set(verdicts[:switch]) == {"unknown"} and "unknown" not in verdicts[switch:]  # one clean switch
    for e in events[switch:]:
        h = e.header
        assert h.threshold == cal.image_threshold and h.pixel_threshold == cal.pixel_threshold
        assert h.verdict == ("defect" if h.score > cal.image_threshold else "ok")
    seqs = [e.header.seq for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # every frame across the switch arrived
    assert all(e.lost == 0 and e.header.dropped == 0 for e in events)

    # --thresholds-only sends the numbers themselves; the daemon confirms them.
    sent = runner.invoke(app, ["calibrate", "apply", str(bundle), "--control", ctl, "--thresholds-only"])
    assert sent.exit_code == 0, sent.stderr
    assert "thresholds sent" in sent.stdout


def test_apply_without_a_daemon_is_one_line_after_the_timeout(tiny_bundle, tmp_path):
    bundle = uncalibrated_copy(tiny_bundle, tmp_path / "bundle")
    uncal = runner.invoke(app, ["calibrate", "apply", str(bundle), "--control", "tcp://127.0.0.1:1"])
    assert uncal.exit_code == 2 and "has no calibration" in uncal.stderr
    write_manifest(bundle, msgspec.structs.replace(read_manifest(bundle), calibration=CAL))
    start = time.monotonic()
    result = runner.invoke(app, ["calibrate", "apply", str(bundle), "--control", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5"])
    assert result.exit_code == 2 and time.monotonic() - start < 5
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: no reply from the control endpoint") and "Traceback" not in result.stderr


def test_live_with_nothing_publishing_gives_up_after_the_idle_timeout(tiny_bundle, tmp_path):
    bundle = uncalibrated_copy(tiny_bundle, tmp_path / "bundle")
    start = time.monotonic()
    result = runner.invoke(app, ["calibrate", "live", f"tcp://127.0.0.1:{free_port()}", "--bundle", str(bundle), "--frames", "40",
                                 "--target-false-reject", "0.1", "--idle-timeout", "1", "--quiet"])
    assert result.exit_code == 2 and time.monotonic() - start < 10
    assert "no heartbeat" in result.stderr or "no scored frame" in result.stderr
    too_few = runner.invoke(app, ["calibrate", "live", "tcp://127.0.0.1:1", "--bundle", str(bundle), "--frames", "100", "--quiet"])
    assert too_few.exit_code == 2 and "refused before gathering" in too_few.stderr and "2995 needed" in too_few.stderr


def good_scores(bundle: Path, tiny_dataset: Path) -> list[float]:
    """The scores the daemon computes for the 24 looping images (same ONNX graph, same frames), sorted."""
    import cv2
    import numpy as np
    import onnxruntime as ort

    paths = sorted((tiny_dataset / "part" / "train" / "good").glob("*.png"))
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    return sorted(float(v) for v in sess.run(["score"], {"frames": np.stack([cv2.imread(str(p)) for p in paths])})[0])


def test_live_refuses_a_stream_with_too_many_frames_judged_defect_unless_forced(tiny_bundle, tiny_dataset, tmp_path):
    """Under a threshold at the median score, half the frames are judged defect: no known-good production gives that."""
    scores = good_scores(tiny_bundle, tiny_dataset)
    median = scores[11]  # 12 of the 24 looping images score above it
    in_force = Calibration(image_threshold=median, pixel_threshold=median, method="site", n_good=24)  # backs <= 11.7 % at 95 %
    bundle = uncalibrated_copy(tiny_bundle, tmp_path / "bundle")
    write_manifest(bundle, msgspec.structs.replace(read_manifest(bundle), calibration=in_force))
    live = ["calibrate", "live", None, "--bundle", str(bundle), "--frames", "40", "--target-false-reject", "0.1", "--quiet"]
    with running_daemon(bundle, tiny_dataset, tmp_path) as (_, pub, ctl, collector):
        live[2] = pub
        raw = (bundle / "manifest.json").read_bytes()
        refused = runner.invoke(app, live)
        assert refused.exit_code == 2, refused.stderr
        line = refused.stderr.strip().splitlines()[-1]
        assert line.startswith("error: calibration refused, nothing written: ") and "of 40 frames (" in line  # the share
        assert f"judged defect under the threshold in force ({median:.4g})" in line
        assert "at most 11.7% (what the calibration in force can back at 95% confidence)" in line  # the limit
        assert "gather again while only good parts run" in line and "--force writes it anyway" in line  # the fix
        assert (bundle / "manifest.json").read_bytes() == raw and not (bundle / "calibration-report.png").exists()

        forced = runner.invoke(app, [*live, "--force"])
        assert forced.exit_code == 0, forced.stderr
        cal = read_manifest(bundle).calibration
        assert "forced: " in cal.note and "judged defect under the threshold in force" in cal.note
        assert read_manifest(bundle).history == [in_force]

        # A threshold that rejects 1 image in 24 is within what good production gives at a 10 % target: accepted.
        reply = send_request(ctl, ApplyThresholds(image_threshold=scores[-2]), timeout_s=5)
        assert reply.ok and reply.image_threshold == scores[-2]
        collector.wait_for(lambda ev: ev and ev[-1].header.threshold == scores[-2], 10)
        accepted = runner.invoke(app, live)
        assert accepted.exit_code == 0, accepted.stderr
        assert "within what good production gives (limit 10%, the target false-reject rate, as the threshold in force is none" in accepted.stderr
        assert "forced" not in read_manifest(bundle).calibration.note
