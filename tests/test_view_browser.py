"""The operator view in a real headless Chromium: a real ZeroMQ publisher feeds it, a real archive backs it.

Skipped with a message where chromium/chromedriver or selenium are missing (see tests/viewpage.py).
"""

from __future__ import annotations

import shutil
import time

import cv2
import numpy as np
import pytest

pytest.importorskip("starlette", reason="the view extra is not installed (pip install 'ssae-inspect[view]')")

from edge.client.view.server import ViewServer  # noqa: E402
from edge.wire import CameraHealth, MaskInfo  # noqa: E402
from viewpage import header, start_browser, wait_until, write_archive  # noqa: E402
from wirepub import WirePublisher  # noqa: E402

pytestmark = pytest.mark.timeout(30)

PIXEL_JS = """
const [img, fx, fy] = arguments;
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d'); g.drawImage(img, 0, 0);
return Array.from(g.getImageData(Math.floor(fx * c.width), Math.floor(fy * c.height), 1, 1).data);
"""


@pytest.fixture(scope="module")
def driver():
    d, profile = start_browser()
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


class Heartbeats:
    """Sends the daemon's heartbeat every period_s when tick() is called (the test thread owns the socket)."""

    def __init__(self, pub: WirePublisher, period_s: float = 0.2, cameras=("cam1",)):
        self.pub, self.period_s, self.seq, self.next_s = pub, period_s, 0, 0.0
        self.cameras = [CameraHealth(camera=c, state="streaming", fps=12.5, frames_dropped=3) for c in cameras]

    def tick(self) -> None:
        if time.monotonic() >= self.next_s:
            self.pub.health(self.seq, period_s=self.period_s, cameras=self.cameras)
            self.seq += 1
            self.next_s = time.monotonic() + self.period_s


def half_mask(side: str, grid: int = 32) -> bytes:
    m = np.zeros((grid, grid), np.uint8)
    if side == "left":
        m[:, : grid // 2] = 255
    else:
        m[:, grid // 2 :] = 255
    return m.tobytes()


def card(driver, camera="cam1"):
    return driver.find_element("css selector", f'article.camera[data-camera="{camera}"]')


def test_overlay_appears_and_changes_as_frames_flow(driver):
    info = MaskInfo(encoding="raw", height_px=32, width_px=32)
    with WirePublisher() as pub, ViewServer([pub.endpoint], port=0, tick_s=0.1) as view:
        pub.wait_for_subscribers(2)
        beats = Heartbeats(pub)
        beats.tick()
        driver.get(view.url)
        pub.frame("cam1", 1, verdict="defect", score=0.9, threshold=0.5, mask=half_mask("left"), mask_info=info)
        img = wait_until(lambda: card(driver).find_element("css selector", "img.overlay"), timeout_s=5, what="the camera card", tick=beats.tick)
        wait_until(lambda: img.get_attribute("data-seq") == "1" and img.get_property("naturalWidth") > 0, timeout_s=5, what="overlay of seq 1", tick=beats.tick)
        left, right = driver.execute_script(PIXEL_JS, img, 0.25, 0.5), driver.execute_script(PIXEL_JS, img, 0.75, 0.5)
        assert left[0] > 150 and left[0] > left[2] + 80, f"mask half not drawn in the threshold colour: {left}"
        assert max(right[:3]) < 60, f"the unmasked half should stay dark: {right}"
        assert card(driver).find_element("css selector", '[data-f="verdict"]').text == "defect"

        pub.frame("cam1", 2, verdict="ok", score=0.2, threshold=0.5, mask=half_mask("right"), mask_info=info)
        wait_until(lambda: img.get_attribute("data-seq") == "2", timeout_s=5, what="overlay of seq 2", tick=beats.tick)
        left, right = driver.execute_script(PIXEL_JS, img, 0.25, 0.5), driver.execute_script(PIXEL_JS, img, 0.75, 0.5)
        assert max(left[:3]) < 60 and right[0] > 150, f"the overlay did not follow the new mask: left {left} right {right}"
        c = card(driver)
        assert "ok" in c.get_attribute("class").split()
        assert c.find_element("css selector", '[data-f="fps"]').text == "12.5"
        assert c.find_element("css selector", '[data-f="drops"]').text.startswith("3 by the inspector")
        chart = c.find_element("css selector", "canvas.chart")
        wait_until(lambda: int(chart.get_attribute("data-points") or 0) == 2, timeout_s=3, what="two points on the strip chart", tick=beats.tick)
        assert chart.get_attribute("data-band") == "no"  # no second threshold on today's wire: no band


def test_uncertain_band_is_drawn_only_when_the_header_has_a_second_threshold(driver):
    with WirePublisher() as pub, ViewServer([pub.endpoint], port=0, tick_s=0.1) as view:
        driver.get(view.url)
        wait_until(lambda: driver.execute_script("return typeof drawChart === 'function' && document.readyState === 'complete'"), timeout_s=5, what="the page script")
        now = driver.execute_script("return Date.now()")
        points = [[now - 2000, 0.3, 0.5, None, "ok"], [now - 1000, 0.45, 0.5, 0.4, "review"], [now - 500, 0.6, 0.5, 0.4, "defect"]]
        drew = driver.execute_script(
            "const c = document.createElement('canvas'); c.width = 200; c.height = 80;"
            "drawChart(c, arguments[0], Date.now(), 60000); const a = c.dataset.band;"
            "drawChart(c, arguments[0].slice(0, 1), Date.now(), 60000); return [a, c.dataset.band];", points)
        assert drew == ["yes", "no"]


def test_a_stale_daemon_turns_the_page_red(driver):
    with WirePublisher() as pub, ViewServer([pub.endpoint], port=0, tick_s=0.1) as view:
        pub.wait_for_subscribers(2)
        beats = Heartbeats(pub, period_s=0.2)
        driver.get(view.url)
        wait_until(lambda: "ok" in card(driver).get_attribute("class").split(), timeout_s=5, what="the camera shown ok", tick=beats.tick)
        assert not driver.find_element("id", "alarm").is_displayed()
        last_beat = time.monotonic()  # heartbeats stop here
        wait_until(lambda: "down" in card(driver).get_attribute("class").split(), timeout_s=5, what="the camera shown down")
        assert time.monotonic() - last_beat < 3 * 0.2 + 1.5, "down should show within three missed heartbeats (plus a tick)"
        c = card(driver)
        assert c.value_of_css_property("border-top-color") == "rgba(255, 59, 59, 1)"
        assert c.find_element("css selector", ".status-text").text == "DOWN"
        assert "silent" in c.find_element("css selector", ".why").text
        alarm = driver.find_element("id", "alarm")
        assert alarm.is_displayed() and "cam1" in alarm.text


def _archive(tmp_path):
    grid = 32
    mask = np.zeros((grid, grid), np.uint8)
    mask[8:16, 8:20] = 255
    region = dict(x=8, y=8, w=12, h=8, area_px=96, peak_score=0.9)
    t0 = time.time_ns() - 60_000_000_000
    entries = [(header(seq=s, capture_ns=t0 + s * 1_000_000_000, regions=[region]), mask) for s in (10, 11, 12)]
    entries.append((header(seq=13, capture_ns=t0 + 13_000_000_000, verdict="ok", score=0.1), None))
    stems = write_archive(tmp_path / "archive", entries)
    return stems


def test_the_gallery_lists_archive_rejects(driver, tmp_path):
    _archive(tmp_path)
    with WirePublisher() as pub, ViewServer([pub.endpoint], port=0, archive=tmp_path / "archive", tick_s=0.1) as view:
        driver.get(view.url)
        items = wait_until(lambda: len(found := driver.find_elements("css selector", "#rejects figure.reject")) == 3 and found,
                           timeout_s=8, what="three rejects in the gallery")
        texts = [i.find_element("css selector", ".what").text for i in items]
        assert texts == ["cam1 #12 · defect", "cam1 #11 · defect", "cam1 #10 · defect"]  # newest first, the ok frame left out
        detail = items[0].find_element("css selector", ".detail").text
        assert "model abababababab" in detail and "0.9000 / 0.5000" in detail
        assert items[0].find_element("css selector", "time").get_attribute("datetime").startswith(time.strftime("%Y-", time.gmtime()))
        img = items[0].find_element("css selector", "img")
        wait_until(lambda: img.get_property("naturalWidth") == 96, timeout_s=5, what="the reject's overlay on its 96x64 frame")
        assert "Start the view with --review" in driver.find_element("id", "gallery-hint").text
        assert not items[0].find_element("css selector", "button").is_enabled()  # no --review: nothing to mark into


def test_marking_a_false_reject_copies_the_frame_into_the_review_folder(driver, tmp_path):
    stems = _archive(tmp_path)
    review = tmp_path / "review"
    with WirePublisher() as pub, ViewServer([pub.endpoint], port=0, archive=tmp_path / "archive", review=review, tick_s=0.1) as view:
        driver.get(view.url)
        item_id = "cam1/" + stems[1].name  # seq 11
        item = wait_until(lambda: driver.find_element("id", f"reject-{item_id}"), timeout_s=8, what="the reject of seq 11")
        item.find_element("css selector", 'button[data-label="false_reject"]').click()
        wait_until(lambda: item.find_element("css selector", ".mark").text == "marked false reject", timeout_s=5, what="the mark shown")
        copied = review / "false_reject" / f"cam1-{stems[1].name}.png"
        archived = stems[1].with_name(stems[1].name + ".png")
        assert copied.read_bytes() == archived.read_bytes()  # the frame, byte for byte
        assert archived.is_file(), "the archive keeps its entry: marks copy, never move"
        assert cv2.imread(str(copied)).shape == (64, 96, 3)
        assert (review / "false_reject" / f"cam1-{stems[1].name}.json").is_file()
        assert not any((review / "confirmed").iterdir())
        assert not item.find_element("css selector", 'button[data-label="confirmed"]').is_enabled()
