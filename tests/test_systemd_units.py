"""systemd/ unit files: the directives we rely on are there, and `systemd-analyze verify` accepts them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
EDGE = UNITS / "ssae-edge@.service"
ADAPTER = UNITS / "ssae-adapter@.service"
OPCUA = UNITS / "ssae-adapter-opcua@.service"
MQTT = UNITS / "ssae-adapter-mqtt@.service"


def directives(path: Path) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values]}}; keys may repeat (DeviceAllow=), so no configparser."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert section is not None, f"{path.name}: {line!r} outside a section"
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def one(d: dict, section: str, key: str) -> str:
    values = d.get(section, {}).get(key)
    assert values, f"[{section}] {key}= missing"
    return values[-1]


@pytest.mark.parametrize("unit", [EDGE, ADAPTER, OPCUA, MQTT], ids=lambda p: p.name)
def test_required_directives(unit):
    d = directives(unit)
    s = "Service"
    assert one(d, s, "Type") == "notify"
    assert int(one(d, s, "WatchdogSec")) >= 2
    assert one(d, s, "Restart") == "on-failure"
    assert float(one(d, s, "RestartSec")) > 0
    assert int(one(d, "Unit", "StartLimitIntervalSec")) > 0 and int(one(d, "Unit", "StartLimitBurst")) > 0
    assert one(d, s, "User") == "ssae" and one(d, s, "Group") == "ssae"
    for key, value in [("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("NoNewPrivileges", "yes")]:
        assert one(d, s, key) == value, f"{unit.name}: {key}"
    assert one(d, s, "CapabilityBoundingSet") == ""
    assert one(d, s, "ExecStart").startswith("/opt/ssae/venv/bin/ssae ")
    assert "WantedBy" in d["Install"]


def test_daemon_unit_specifics():
    d = directives(EDGE)
    s = "Service"
    assert one(d, s, "ExecStart").endswith("ssae edge run /etc/ssae/%i.toml")
    assert "video" in one(d, s, "SupplementaryGroups").split()
    assert d[s]["ReadWritePaths"] == ["/var/lib/ssae/archive"]  # the archive and nothing else
    assert d[s]["StateDirectory"] == ["ssae/archive"]
    assert one(d, s, "DevicePolicy") == "closed" and "char-video4linux rw" in d[s]["DeviceAllow"]
    assert "HUP" in one(d, s, "ExecReload")
    # The archive path matches what the example line config writes to.
    example = Path(__file__).resolve().parent.parent / "configs" / "edge" / "line.example.toml"
    assert '"/var/lib/ssae/archive' in example.read_text()  # a tracked file: missing is a failure too


@pytest.mark.parametrize(
    "unit, command",
    [(ADAPTER, "ssae adapter modbus /etc/ssae/adapter/%i.toml"), (OPCUA, "ssae adapter opcua /etc/ssae/adapter/opcua-%i.toml"), (MQTT, "ssae adapter mqtt /etc/ssae/adapter/mqtt-%i.toml")],
    ids=lambda p: getattr(p, "name", ""),
)
def test_adapter_unit_specifics(unit, command):
    d = directives(unit)
    s = "Service"
    assert one(d, s, "ExecStart").endswith(command)
    assert "ReadWritePaths" not in d[s] and "StateDirectory" not in d[s]  # it writes nothing
    assert one(d, s, "PrivateDevices") == "yes"
    assert "BindsTo" not in d["Unit"] and "Requires" not in d["Unit"]  # must outlive the daemon to hold "unavailable"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (apt-get install systemd)")
def test_systemd_analyze_verify(tmp_path):
    """Verify in a scratch root that has the units, the system's own units, and the ExecStart binary."""
    system_units = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if (p / "sysinit.target").exists()), None)
    if system_units is None:
        pytest.skip("no system unit directory with sysinit.target to verify against")
    root = tmp_path / "root"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in (EDGE, ADAPTER, OPCUA, MQTT):
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    ssae = root / "opt/ssae/venv/bin/ssae"
    ssae.parent.mkdir(parents=True)
    ssae.write_text("#!/bin/sh\n")
    ssae.chmod(0o755)
    (root / "bin").mkdir()
    shutil.copy(shutil.which("kill") or "/bin/kill", root / "bin/kill")
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "notice"}
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", "ssae-edge@line1.service", "ssae-adapter@line1.service", "ssae-adapter-opcua@line1.service", "ssae-adapter-mqtt@line1.service"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    # Unknown keys and bad values are only warnings (exit 0), so any output counts as a failure.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers not installed (apt-get install systemd)")
def test_sysusers_creates_the_service_user_in_group_video(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nvideo:x:44:\n")
    result = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(UNITS / "ssae.sysusers")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    user = [line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines() if line.startswith("ssae:")]
    assert user and user[0][5] == "/var/lib/ssae" and user[0][6].endswith("nologin")
    video = [line for line in (tmp_path / "etc/group").read_text().splitlines() if line.startswith("video:")]
    assert video[0].split(":")[3] == "ssae"
