"""Test helper: a real headless Chromium driven by selenium, and an archive written by the daemon's own code.

Chromium is Debian's `chromium` with `chromium-driver`; selenium is told both paths, so it never tries to
download a browser or driver (this machine's network is closed). `browser()` skips the test with a message
where either is missing.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from edge.wire import SCHEMA_VERSION, FrameHeader, MaskInfo, Region

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000", "--disable-dev-shm-usage")


def find_chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def start_browser():
    """A headless Chromium with a fresh profile folder; skips the test where no browser can run."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install 'ssae-inspect[view,test]')")
    from selenium.webdriver.chrome.service import Service

    found = find_chromium()
    if found is None:
        pytest.skip("chromium and chromedriver not found (apt-get install chromium chromium-driver): browser tests skipped")
    profile = tempfile.mkdtemp(prefix="ssae-view-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=found[1]))
    driver.set_page_load_timeout(10)
    driver.set_script_timeout(5)
    return driver, profile


def wait_until(condition, *, timeout_s: float, what: str, tick=None, every_s: float = 0.1):
    """Poll `condition()` until truthy (returned) or fail naming `what`; `tick()` runs each poll (heartbeats)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if tick is not None:
            tick()
        try:
            last = condition()
        except Exception as e:  # the page may be mid-update (stale element): poll again
            last = e
        else:
            if last:
                return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


def header(camera="cam1", seq=1, *, capture_ns=None, verdict="defect", score=0.9, threshold=0.5, grid=32, regions=()) -> FrameHeader:
    now = time.time_ns()
    return FrameHeader(
        schema_version=SCHEMA_VERSION, camera=camera, seq=seq,
        capture_ns=capture_ns if capture_ns is not None else now, publish_ns=now,
        score=score, threshold=threshold, verdict=verdict, model_id="ab" * 32,
        regions=[Region(**r) for r in regions],
        mask=MaskInfo(encoding="png", height_px=grid, width_px=grid, roi_x=0, roi_y=0, roi_w=96, roi_h=64),
    )


def write_archive(folder: Path, entries: list[tuple[FrameHeader, np.ndarray | None]]) -> list[Path]:
    """Archive entries exactly as the daemon writes them (edge.daemon.archive), each with a 96x64 grey frame."""
    from edge.daemon.archive import Archive, Entry
    from edge.daemon.config import ArchiveConfig

    archive = Archive(ArchiveConfig(dir=str(folder), quota_mb=100, verdicts=["defect", "ok"]))
    stems = []
    for h, mask in entries:
        image = np.full((64, 96, 3), 120, np.uint8)
        image[:, :, 1] = np.arange(96, dtype=np.uint8)[None, :]  # a gradient: a real photo-like frame, not flat
        stems.append(archive.write(Entry(image, mask, h)))
    return stems
