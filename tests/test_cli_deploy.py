"""`ssae edge keys` and `ssae adapter modbus`: CLI behaviour, config errors, pulse policy, and a real
adapter process stopped by SIGTERM that leaves the PLC in the fail-safe state."""

from __future__ import annotations

import math
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
from test_adapter_modbus import ALIVE, REJECT, STATUS, UNAVAILABLE, Daemon, PlcSim, free_port, wait_for
from typer.testing import CliRunner

from edge.adapter.config import load_adapter_config
from edge.adapter.modbus import scale
from edge.adapter.plc_link import STATUS_BITS
from edge.adapter.pulse import PulseSchedule
from edge.errors import UserError
from ssae import app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "configs" / "adapter" / "modbus.toml"


def test_keys_command_creates_and_refuses_overwrite(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["edge", "keys", str(tmp_path / "keys"), "--name", "edge"])
    assert result.exit_code == 0, result.output
    secret = tmp_path / "keys" / "edge.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert (tmp_path / "keys" / "edge.key").exists()
    before = secret.read_bytes()
    again = runner.invoke(app, ["edge", "keys", str(tmp_path / "keys"), "--name", "edge"])
    assert again.exit_code == 2
    assert "exists" in again.stderr and "--force" in again.stderr and "Traceback" not in again.output
    assert secret.read_bytes() == before
    forced = runner.invoke(app, ["edge", "keys", str(tmp_path / "keys"), "--name", "edge", "--force"])
    assert forced.exit_code == 0 and secret.read_bytes() != before


def test_example_config_loads_and_documents_every_key():
    cfg = load_adapter_config(EXAMPLE)
    assert cfg.reject.encoder is None and cfg.daemon.security.curve is False
    lines = EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.lstrip().startswith("#"):  # every live key has a comment above or beside it
            assert "#" in line or lines[i - 1].lstrip().startswith("#"), f"modbus.toml line {i + 1} has no comment: {line}"


@pytest.mark.parametrize(
    "edit, message",
    [
        (("coil = 0", "coil = 1"), "outputs.unavailable_coil and reject.coil are both coil 1"),
        (("pulse_ms = 100", "pulse_ms = 0"), "reject.pulse_ms"),
        (("overlap = \"extend\"", "overlap = \"merge\""), "reject.overlap"),
        (("[plc]", "[plc]\nhots = \"x\""), "plc.hots is not a known key"),
        (("endpoint = \"tcp://127.0.0.1:5555\"", "endpoint = \"localhost:5555\""), "not a ZeroMQ endpoint"),
        (("# [reject.encoder]\n# register = 100", "[reject.encoder]\nregister = 100\noffset_counts = 40000\n#"), "offset_counts = 40000"),
    ],
)
def test_config_errors_name_field_and_fix(tmp_path, edit, message):
    text = EXAMPLE.read_text()
    assert edit[0] in text
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_adapter_config(bad)


def test_adapter_command_bad_config_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["adapter", "modbus", str(tmp_path / "missing.toml")])
    assert result.exit_code == 2
    assert "no such config file" in result.stderr and "Traceback" not in result.output


def test_pulse_schedule_policies():
    s = PulseSchedule(0.1, "extend")
    s.add(1.0, now_s=1.0)
    assert s.active(1.0)
    s.add(1.05, now_s=1.0)
    assert s.active(1.06) and s.active(1.12) and s.active(1.149) and not s.active(1.151)  # on until the last one's end
    q = PulseSchedule(0.1, "queue", min_gap_s=0.02)
    assert q.add(1.0, 1.0) == (1.0, 1.1)
    start, end = q.add(1.0, 1.0)
    assert math.isclose(start, 1.12) and math.isclose(end, 1.22) and q.deferred == 1
    assert q.active(1.05) and not q.active(1.11) and q.active(1.13) and q.late == 0
    late = PulseSchedule(0.1)
    late.add(0.5, now_s=1.0)  # asked for the past: starts now, counted
    assert late.late == 1 and late.active(1.05)
    unseen = PulseSchedule(0.1)
    unseen.add(1.0, now_s=1.0)
    assert unseen.active(1.5) and unseen.late == 1  # never seen on: delivered late, in full, not lost
    assert unseen.active(1.59) and not unseen.active(1.61)
    gone = PulseSchedule(0.1)
    gone.add(1.0, now_s=1.0)
    assert gone.drop_ended(2.0) == 1 and gone.next_change_s(2.0) == math.inf


def test_score_scaling():
    assert scale(0.5, 1000) == 500 and scale(-1, 1000) == 0 and scale(1e9, 1000) == 65534
    assert scale(float("nan"), 1000) == 65535 and scale(float("inf"), 1000) == 65535


def test_sigterm_leaves_plc_fail_safe(tmp_path):
    """A real `ssae adapter modbus` process: available while the stream is healthy, and on SIGTERM it
    writes "unavailable" (and the stop bit) before exiting 0."""
    ctx = zmq.Context()
    plc = PlcSim(free_port())
    plc.start()
    daemon = Daemon(ctx)
    daemon.thread.start()
    daemon.beating.set()
    text = EXAMPLE.read_text()
    for old, new in [
        ('endpoint = "tcp://127.0.0.1:5555"', f'endpoint = "{daemon.endpoint}"'),
        ('host = "192.168.10.20"', 'host = "127.0.0.1"'),
        ("port = 502", f"port = {plc.port}"),
        ("coil = 0", f"coil = {REJECT}"),
        ("unavailable_coil = 1", f"unavailable_coil = {UNAVAILABLE}"),
        ("alive_coil = 2", f"alive_coil = {ALIVE}"),
        ("status_register = 4", f"status_register = {STATUS}"),
        ("recover_after_s = 2.0", "recover_after_s = 0.2"),
    ]:
        assert old in text
        text = text.replace(old, new, 1)
    cfg = tmp_path / "adapter.toml"
    cfg.write_text(text)
    # Stand in for systemd's notify socket: the unit is Type=notify with WatchdogSec.
    notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_sock.bind(str(tmp_path / "notify"))
    notify_sock.settimeout(0.1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2000000"}
    proc = subprocess.Popen([sys.executable, "-m", "ssae", "adapter", "modbus", str(cfg)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: plc.value("coil", UNAVAILABLE) == 0, timeout_s=30, what="adapter process reports available")
        daemon.frame("defect", 0.9)
        wait_for(lambda: len(plc.pulses(REJECT)) == 1, what="pulse from the process")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        states = []
        while True:
            try:
                states += notify_sock.recv(4096).decode().splitlines()
            except TimeoutError:
                break
        assert states[0] == "READY=1" and "WATCHDOG=1" in states and states[-1] == "STOPPING=1", states
        assert plc.value("coil", UNAVAILABLE) == 1
        assert plc.value("reg", STATUS) & STATUS_BITS["adapter_stopped"]
        assert plc.value("coil", REJECT) == 0  # reject_all_when_unavailable = false in the example
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        stderr = proc.stderr.read()
        proc.stderr.close()
        daemon.close()
        plc.stop()
        ctx.destroy(linger=0)
        notify_sock.close()
    assert "Traceback" not in stderr, stderr


@pytest.mark.parametrize("command", [["adapter", "modbus", "configs/adapter/modbus.toml"], ["edge", "run", "--bundle", "b", "--source", "0"]])
def test_unknown_log_level_is_one_line_for_every_long_running_command(command):
    result = CliRunner().invoke(app, [*command, "--log-level", "verbose"])
    assert result.exit_code == 2, result.output
    assert "--log-level 'verbose' is unknown; use debug, info, warning or error" in result.output
    assert "Traceback" not in result.output
