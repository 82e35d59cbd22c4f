"""`ssae edge run` / `python -m edge run`: signals to a real daemon process, quick mode, one-line refusals."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import msgspec
import numpy as np
import pytest
import zmq
from typer.testing import CliRunner

from edge.cli import app
from edge.wire import FrameHeader, Health

ROOT = Path(__file__).resolve().parents[1]
DECODER = msgspec.msgpack.Decoder(FrameHeader | Health)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:02d}.png"), np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    return folder


class Tracker:
    """A SUB socket that checks, per message, that every seq was received or reported dropped."""

    def __init__(self, ctx, endpoint):
        self.sock = ctx.socket(zmq.SUB)
        self.sock.linger = 0
        self.sock.subscribe(b"")
        self.sock.connect(endpoint)
        self.last: dict[str, int] = {}
        self.lost = 0
        self.frames: list[FrameHeader] = []
        self.health: list[Health] = []

    def until(self, predicate, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.sock.poll(200):
                continue
            message = DECODER.decode(self.sock.recv_multipart()[1])
            if isinstance(message, Health):
                self.health.append(message)
                continue
            self.lost += message.seq - self.last.get(message.camera, -1) - 1 - message.dropped
            self.last[message.camera] = message.seq
            self.frames.append(message)
            if predicate(message):
                return message
        raise AssertionError(f"no such frame within {timeout_s} s; last: {self.frames[-1:]}")


def test_sighup_reloads_and_sigterm_drains_a_real_daemon_process(tiny_bundle, tmp_path):
    folder = write_images(tmp_path / "imgs", 3)
    port = free_port()
    config = tmp_path / "edge.toml"
    body = f"""
name = "sig"
bundle = "{tiny_bundle}"
threads = 1
[[cameras]]
id = "cam"
source = "{folder}"
loop = true
pace_fps = 40
[publish]
endpoints = ["tcp://127.0.0.1:{port}"]
heartbeat_s = 0.2
wait_for_subscriber_s = 30
"""
    config.write_text(body)
    log = tmp_path / "daemon.log"
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # stands in for systemd's notify socket
    systemd.bind(str(tmp_path / "notify"))
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "400000"}
    with open(log, "w") as err, zmq.Context() as ctx, systemd:
        proc = subprocess.Popen([sys.executable, "-m", "edge", "run", str(config)], cwd=ROOT, stdout=err, stderr=err, env=env)
        try:
            sub = Tracker(ctx, f"tcp://127.0.0.1:{port}")
            first = sub.until(lambda h: True, timeout_s=60)
            assert first.verdict == "unknown" and first.reason.startswith("uncalibrated")
            config.write_text("image_threshold = 0.0\n" + body)
            proc.send_signal(signal.SIGHUP)
            sub.until(lambda h: h.threshold == 0.0 and h.verdict == "defect", timeout_s=20)
            config.write_text("image_threshold = -1.0\n" + body)  # a bad edit: refused, the running model stays
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while "reload failed" not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            n = len(sub.frames)
            sub.until(lambda h: len(sub.frames) >= n + 10, timeout_s=20)
            assert all(h.threshold == 0.0 for h in sub.frames[n:])
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            while sub.sock.poll(500):  # what was in flight, then the final heartbeat
                message = DECODER.decode(sub.sock.recv_multipart()[1])
                if isinstance(message, Health):
                    sub.health.append(message)
                else:
                    sub.lost += message.seq - sub.last[message.camera] - 1 - message.dropped
                    sub.last[message.camera] = message.seq
            assert sub.lost == 0, "the stream never dropped through reloads"
            final = sub.health[-1]
            assert final.cameras[0].state == "finished" and final.cameras[0].frames_judged == final.cameras[0].frames_captured
            text = log.read_text()
            assert "reloaded" in text and "image_threshold = -1.0 is below 0.0" in text and "stopped (cam:" in text
            assert "Traceback" not in text
            systemd.setblocking(False)
            notes = []
            while True:
                try:
                    notes.append(systemd.recv(512))
                except BlockingIOError:
                    break
            assert notes[0].startswith(b"READY=1") and notes[-1].startswith(b"STOPPING=1")
            assert b"WATCHDOG=1" in notes  # every 0.2 s while running
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def test_quick_mode_publishes_every_frame_and_exits_by_itself(tiny_bundle, tmp_path):
    avi = tmp_path / "parts.avi"
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 25, (32, 32))
    for i in range(15):
        writer.write(np.full((32, 32, 3), i * 10, np.uint8))
    writer.release()
    port = free_port()
    frames: list[FrameHeader] = []
    with zmq.Context() as ctx:
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.subscribe(b"frame.")
        sub.connect(f"tcp://127.0.0.1:{port}")
        done = threading.Event()

        def read():
            while not done.is_set():
                if sub.poll(100):
                    frames.append(DECODER.decode(sub.recv_multipart()[1]))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        result = CliRunner().invoke(app, [
            "run", "--bundle", str(tiny_bundle), "--source", str(avi), "--publish", f"tcp://127.0.0.1:{port}",
            "--policy", "all", "--wait-for-subscriber", "20", "--threshold", "1000", "--threads", "1", "--log-level", "warning",
        ])
        time.sleep(0.3)
        done.set()
        reader.join(5)
        sub.close()
    assert result.exit_code == 0, result.stderr
    assert [f.seq for f in frames] == list(range(15)) and all(f.dropped == 0 for f in frames)
    assert all(f.verdict == "ok" and f.threshold == 1000 and math.isfinite(f.score) and f.camera == "cam0" for f in frames)


def run_cli(*args: str):
    result = CliRunner().invoke(app, ["run", *args])
    lines = result.stderr.strip().splitlines()
    return result.exit_code, lines


def test_corrupt_bundle_refused_in_one_line(tiny_bundle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    with open(bad / "model.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff\xff\xff")
    video = tmp_path / "v.avi"
    video.write_bytes(b"")
    code, lines = run_cli("--bundle", str(bad), "--source", str(video))
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: bundle refused:") and "sha256" in lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["CONFIG"], "cameras[0].queue = \"sometimes\" is not one of 'latest', 'all'; use one of them"),
        (["CONFIG", "--bundle", "b"], "--bundle belong to quick mode; with"),
        (["--bundle", "b"], "give a config file (ssae edge run configs/edge/demo.toml) or quick mode"),
        (["--bundle", "b", "--source", "/no/such/video.avi"], "--source /no/such/video.avi: no such file or folder"),
        (["--bundle", "b", "--source", "0", "--policy", "some"], "--policy 'some' is unknown; use latest or all"),
        (["--bundle", "b", "--source", "0", "--publish", "localhost"], "endpoints[0] = 'localhost' is not a ZeroMQ endpoint"),
        (["missing.toml"], "missing.toml: no such config file"),
    ],
)
def test_bad_invocations_refused_in_one_line(tmp_path, args, expected):
    config = tmp_path / "edge.toml"
    config.write_text('bundle = "b"\n[[cameras]]\nid = "c"\nsource = "s"\nqueue = "sometimes"\n')
    code, lines = run_cli(*[str(config) if a == "CONFIG" else a for a in args])
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


def write_avi(path: Path, n: int, size=(160, 120)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, size)
    for i in range(n):
        writer.write(np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return path


def test_quick_mode_judges_every_frame_of_a_file_by_default_and_says_so_at_the_end(tiny_bundle, tmp_path):
    """No --policy: three files are read far faster than one worker judges them, yet every frame is judged;
    with --policy latest what is skipped is counted and said on stderr at the end, whatever the log level."""
    avi = write_avi(tmp_path / "parts.avi", 100)

    def quick(*extra):
        result = CliRunner().invoke(app, [
            "run", "--bundle", str(tiny_bundle), *["--source", str(avi)] * 3, "--publish", f"tcp://127.0.0.1:{free_port()}",
            "--threshold", "1000", "--threads", "1", "--log-level", "error", *extra,
        ])
        assert result.exit_code == 0, result.stderr
        return result.stderr.splitlines()

    lines = quick()
    assert [f"cam{i} ({avi}): 100 frames captured, 100 judged, 0 dropped" for i in range(3)] == [line for line in lines if line.startswith("cam")]
    lines = quick("--policy", "latest")
    for i in range(3):
        (summary,) = [line for line in lines if line.startswith(f"cam{i} ")]
        judged, dropped = (int(summary.split(", ")[k].split()[0]) for k in (1, 2))
        assert judged + dropped == 100
        warned = [line for line in lines if line.startswith(f"warning: cam{i} skipped {dropped} of 100 frames: queue policy 'latest'")]
        assert len(warned) == (1 if dropped else 0), lines


def test_disk_full_archive_errors_are_logged_once_with_a_count(tiny_bundle, tmp_path):
    """A real daemon process whose every file write fails (RLIMIT_FSIZE: EFBIG, as a full disk fails them)."""
    import resource

    folder = write_images(tmp_path / "imgs", 30)
    config = tmp_path / "edge.toml"
    config.write_text(f"""
bundle = "{tiny_bundle}"
threads = 1
[[cameras]]
id = "cam"
source = "{folder}"
[publish]
endpoints = ["tcp://127.0.0.1:{free_port()}"]
[archive]
dir = "{tmp_path / 'archive'}"
quota_mb = 10
verdicts = ["unknown"]
""")

    def small_files():  # in the child: any write beyond 200 bytes into a file fails
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))

    proc = subprocess.run([sys.executable, "-m", "edge", "run", str(config)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          preexec_fn=small_files, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "archive: cannot write" in line]
    # The first failure in full, then only counts: one per minute of the run (on a slow box) and the rest at shutdown.
    assert "File too large" in lines[0] and 2 <= len(lines) <= 4, proc.stderr
    repeats = [int(re.search(r"\(repeated (\d+) times in the last", line).group(1)) for line in lines[1:]]
    # On a busy box the archive's queue can fill and entries are skipped (counted in their own rate-limited line):
    # every one of the 30 frames is either a failed write or a counted skip.
    behind = [line for line in proc.stderr.splitlines() if "archive behind: skipped" in line]
    skipped = len(behind) and 1 + sum(int(m.group(1)) for line in behind[1:] if (m := re.search(r"\(repeated (\d+) times", line)))
    assert 1 + sum(repeats) + skipped == 30, proc.stderr


def test_sources_that_can_never_open_fail_their_camera_once_instead_of_retrying(tiny_bundle, tmp_path):
    """Config mode: a missing path and a corrupt video are failed cameras (heartbeat and one log line each); the good one runs."""
    folder = write_images(tmp_path / "imgs", 3)
    corrupt = tmp_path / "corrupt.avi"
    corrupt.write_bytes(b"RIFF\x00\x10\x00\x00AVI LIST" + bytes(3000))
    port = free_port()
    config = tmp_path / "edge.toml"
    config.write_text(f"""
bundle = "{tiny_bundle}"
threads = 1
[[cameras]]
id = "good"
source = "{folder}"
loop = true
pace_fps = 20
[[cameras]]
id = "missing"
source = "{tmp_path / 'no-such.avi'}"
backoff_initial_s = 0.05
[[cameras]]
id = "corrupt"
source = "{corrupt}"
backoff_initial_s = 0.05
[publish]
endpoints = ["tcp://127.0.0.1:{port}"]
heartbeat_s = 0.2
""")
    with zmq.Context() as ctx:
        sub = Tracker(ctx, f"tcp://127.0.0.1:{port}")
        proc = subprocess.Popen([sys.executable, "-m", "edge", "run", str(config)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        try:
            sub.until(lambda h: len(sub.frames) >= 20, timeout_s=60)  # the good camera inspects meanwhile
            states = {c.camera: c for c in sub.health[-1].cameras}
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            sub.sock.close()
    assert states["good"].state == "streaming"
    assert states["missing"].state == "failed" and "no such file or folder" in states["missing"].last_error
    assert states["corrupt"].state == "failed" and "did not open" in states["corrupt"].last_error
    assert states["missing"].reconnects == states["corrupt"].reconnects == 0
    assert "retrying" not in err
    assert len([line for line in err.splitlines() if "camera missing failed" in line]) == 1, err
    assert len([line for line in err.splitlines() if "camera corrupt failed" in line]) == 1, err
