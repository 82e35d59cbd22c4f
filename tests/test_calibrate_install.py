"""An edge box installed as the README says runs what the README tells it to run.

A fresh venv (no system site packages), then `pip install "/path/to/ssae[EXTRA]"` with the extra the README's
Install section names, exactly as a user types it; then, with that venv's own `ssae` and nothing of ours
on the path: `calibrate fit --help` and `adapter modbus --help`, a real `calibrate fit` with labelled
defects (rules, report), `calibrate show`, a real daemon (`edge run`) with `calibrate live` on its stream
and `calibrate apply` to it, and `edge keys`. Slow (pip downloads and installs for real); skipped, saying so, where the package index
cannot be reached.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "ssae.py", "edge", "train", "calibrate")  # what the wheel is built from


def readme_edge_extra() -> str:
    """The extra in the README's edge-box install line: pip install "/path/to/ssae[EXTRA]"."""
    install = ROOT.joinpath("README.md").read_text().split("### Install", 1)[1].split("\n### ", 1)[0]
    found = re.findall(r'pip install "/path/to/ssae\[([a-z0-9_,-]+)\]"', install)
    assert len(found) == 1, f"README's Install section should hold one `pip install \"/path/to/ssae[EXTRA]\"` line, found {found}"
    return found[0]


def index_unreachable() -> str | None:
    """Why pip cannot reach its package index, or None when it can (a file:// index always can)."""
    url = urllib.parse.urlparse(os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple"))
    if url.scheme == "file":
        return None
    host, port = url.hostname or "pypi.org", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
        return None
    except OSError as e:
        return f"the package index {host}:{port} cannot be reached ({e})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(venv: Path, *args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "ssae"), *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_readme_edge_install_runs_calibrate_live_apply_and_keys(tiny_bundle, tiny_dataset, tmp_path):
    extra = readme_edge_extra()
    why = index_unreachable()
    if why:
        pytest.skip(f"{why}: this test installs ssae[{extra}] into a fresh venv as a user would; run it where pip can download")
    src = tmp_path / "ssae"
    src.mkdir()
    for name in SOURCES:  # a copy: building the wheel writes build/ and *.egg-info next to the sources
        (shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")) if (ROOT / name).is_dir()
         else shutil.copy2(ROOT / name, src / name))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # Nothing of this test's environment may leak in: no PYTHONPATH (our checkout), no active venv.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    # --no-compile: the same packages, minus minutes of byte-compiling scipy and matplotlib on two cores.
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile", f"{src}[{extra}]"],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert pip.returncode == 0, f"pip install ssae[{extra}] failed:\n{pip.stderr[-3000:]}"
    has_torch = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.util as u; print(u.find_spec('torch') is not None)"],
                               env=env, capture_output=True, text=True, timeout=60, check=False)
    assert has_torch.stdout.strip() == "False", "the README says the edge needs no torch, but the extra pulled it in"

    for command in (["calibrate", "fit"], ["adapter", "modbus"]):  # the others run for real below
        helped = run(venv, *command, "--help", env=env)
        assert helped.returncode == 0 and "Usage: ssae" in helped.stdout, f"ssae {' '.join(command)} --help: {helped.stderr[-2000:]}"

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    part = tiny_dataset / "part"
    defects = [a for k in ("dent", "scratch", "spot") for a in ("--defect", part / "test" / k)]
    fitted = run(venv, "calibrate", "fit", bundle, "--good", part / "train" / "good", *defects, "--target-false-reject", "0.15",
                 "--force", "--quiet", "--threads", "1", env=env)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    assert "worst defect type" in fitted.stdout
    assert (bundle / "calibration-report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = run(venv, "calibrate", "show", bundle, env=env)
    assert shown.returncode == 0 and "recall-at-frr" in shown.stdout, shown.stderr[-2000:]

    pub, ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "line.toml"
    config.write_text(
        f'bundle = "{bundle}"\nthreads = 1\nmax_batch = 4\n'
        f'[[cameras]]\nid = "cam0"\nsource = "{part / "train" / "good"}"\nloop = true\nqueue = "all"\npace_fps = 150\n'
        f'[publish]\nendpoints = ["{pub}"]\nheartbeat_s = 0.5\n[control]\nendpoint = "{ctl}"\n'
    )
    log = (tmp_path / "daemon.log").open("w")  # a file, not a pipe: nothing blocks the daemon if the log grows
    daemon = subprocess.Popen([str(venv / "bin" / "ssae"), "edge", "run", str(config)], env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        # live waits up to --idle-timeout for the daemon's first heartbeat: no other readiness check needed.
        live = run(venv, "calibrate", "live", pub, "--bundle", bundle, "--frames", "40", "--target-false-reject", "0.1",
                   "--idle-timeout", "30", "--quiet", env=env)
        assert live.returncode == 0, f"{live.stderr[-3000:]}\ndaemon log:\n{(tmp_path / 'daemon.log').read_text()[-2000:]}"
        applied = run(venv, "calibrate", "apply", bundle, "--control", ctl, "--timeout", "10", env=env)
        assert applied.returncode == 0 and "bundle reloaded" in applied.stdout, applied.stderr[-3000:]
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=5)
        log.close()

    keys = run(venv, "edge", "keys", tmp_path / "keys", "--name", "daemon", env=env)
    assert keys.returncode == 0 and (tmp_path / "keys" / "daemon.key_secret").is_file(), keys.stderr[-2000:]
