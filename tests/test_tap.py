"""`ssae edge tap` through typer's CliRunner against a real publisher on loopback."""

from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner
from wirepub import WirePublisher

from edge.client.tap import run_tap
from edge.wire import CameraHealth, MaskInfo
from ssae import app


def publish_in_background(pub, script, subscriptions=2):
    """Run script(pub) in a thread once the tap has subscribed; returns the thread (join it)."""
    errors = []

    def body():
        try:
            pub.wait_for_subscribers(subscriptions, timeout_s=10)
            script(pub)
        except Exception as e:  # surfaced by the test through `errors`
            errors.append(e)

    t = threading.Thread(target=body, name="test-publisher", daemon=True)
    t.start()
    return t, errors


def defect_mask():
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 5:10] = 255
    return mask


def stream(pub):
    pub.health(0, cameras=[CameraHealth(camera="cam1", state="streaming", fps=12.5, frames_judged=3)])
    pub.frame("cam1", 0)
    pub.frame("cam1", 1, verdict="defect", score=0.9, mask=defect_mask().tobytes(),
              mask_info=MaskInfo(encoding="raw", height_px=16, width_px=16),
              regions=[dict(x=5, y=4, w=5, h=4, area_px=20, peak_score=0.9)])
    pub.frame("cam1", 5, dropped=1)  # seq 2..4 missing, one reported as dropped: 2 lost


def test_tap_prints_frames_warns_on_gaps_and_saves_defects(tmp_path):
    with WirePublisher() as pub:
        thread, errors = publish_in_background(pub, stream)
        result = CliRunner().invoke(app, ["edge", "tap", pub.endpoint, "--frames", "3", "--timeout", "10", "--save", str(tmp_path)])
        thread.join(timeout=5)
    assert not errors, errors
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "health d1 #0" in out and "cam1 streaming 12.5fps" in out
    lines = [line for line in out.splitlines() if line.startswith("cam1 ")]
    assert len(lines) == 3
    assert "seq=1 defect" in lines[1] and "regions=1" in lines[1] and "latency=" in lines[1]
    assert "dropped=1" in lines[2]
    assert "cam1 lost 2 frame(s) before seq 5" in result.stderr
    assert "3 frames (ok 2, defect 1, unknown 0)" in result.stderr
    (saved,) = tmp_path.glob("cam1-*-0000000001.png")
    png = cv2.imread(str(saved))
    assert png is not None and png.shape[0] >= 256
    assert (png[..., 2] > 200).any()  # red mask pixels are drawn
    header = json.loads(saved.with_suffix(".json").read_text())
    assert header["verdict"] == "defect" and header["regions"][0]["area_px"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == [saved.with_suffix(".json").name, saved.name]


def test_tap_save_never_overwrites_evidence_across_daemon_restarts(tmp_path):
    """A restarted daemon numbers from 0 again: the earlier run's files stay, and an existing name is never replaced."""
    def defect(capture_ns):
        def script(pub):
            pub.frame("cam1", 1, verdict="defect", score=0.9, capture_ns=capture_ns, regions=[dict(x=1, y=1, w=2, h=2, area_px=4, peak_score=0.9)])
        return script

    first_run, second_run = 1_767_225_600_000_000_000, 1_767_225_900_500_000_000
    for capture_ns in (first_run, second_run, first_run):  # the last: a second tap saving the same frame again
        with WirePublisher() as pub:
            thread, errors = publish_in_background(pub, defect(capture_ns), subscriptions=1)
            summary = run_tap(pub.endpoint, save_dir=tmp_path, frames=1, timeout_s=10, health=False, emit=lambda _: None, warn=lambda _: None)
            thread.join(timeout=5)
        assert not errors and summary.saved == 1
        if capture_ns == second_run:
            before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"cam1-{stamp}-0000000001{n}.{ext}" for stamp, n in (("20260101T000000.000000000Z", ""), ("20260101T000500.500000000Z", ""),
                                                                             ("20260101T000000.000000000Z", "-2")) for ext in ("png", "json"))
    assert all((tmp_path / name).read_bytes() == data for name, data in before.items()), "an earlier file was rewritten"


def test_tap_times_out_with_exit_1_and_warns_about_heartbeats():
    with WirePublisher() as pub:
        thread, errors = publish_in_background(pub, lambda p: p.health(0, period_s=0.1))
        started = time.monotonic()
        result = CliRunner().invoke(app, ["edge", "tap", pub.endpoint, "--timeout", "1"])
        thread.join(timeout=5)
    assert not errors, errors
    assert result.exit_code == 1
    assert time.monotonic() - started < 10
    assert "no heartbeat from d1" in result.stderr
    assert "no message for 1 s" in result.stderr


def test_tap_bad_endpoint_is_one_line_exit_2():
    result = CliRunner().invoke(app, ["edge", "tap", "nonsense", "--timeout", "1"])
    assert result.exit_code == 2
    assert "error:" in result.stderr and "Traceback" not in result.output


def test_run_tap_library_counts_and_stops_on_request():
    lines, warnings = [], []
    with WirePublisher() as pub:
        thread, errors = publish_in_background(pub, lambda p: [p.frame("cam1", i, verdict="unknown") for i in range(4)], subscriptions=1)
        summary = run_tap(pub.endpoint, frames=4, timeout_s=10, health=False, emit=lines.append, warn=warnings.append)
        thread.join(timeout=5)
    assert not errors, errors
    assert summary.stopped == "frames" and summary.verdicts["unknown"] == 4 and summary.tally.lost == 0
    assert summary.latency_p50_ms is not None and len(lines) == 4 and not warnings


@pytest.mark.parametrize("with_mask", [True, False])
def test_render_defect_without_or_with_mask(with_mask):
    from edge.client.tap import render_defect
    from edge.wire import FrameHeader, Region

    header = FrameHeader(schema_version=1, camera="c", seq=3, capture_ns=0, publish_ns=0, score=1.0, threshold=0.5,
                         verdict="defect", model_id="m", regions=[Region(x=12, y=12, w=2, h=2, area_px=4, peak_score=1.0)])
    mask = defect_mask() if with_mask else None
    img = render_defect(header, mask)
    assert img.ndim == 3 and max(img.shape[:2]) >= 256
    k = img.shape[0] // 16  # the 16x16 grid, scaled by a whole factor
    # a mask pixel is drawn in the threshold's colour of the view's scale (orange-red, over the dark grid)
    lit = (img[..., 2] > 150) & (img[..., 1] < 100) & (img[..., 0] < 50)
    inside = lit[4 * k : 8 * k, 5 * k : 10 * k]
    if with_mask:
        assert inside.mean() > 0.8 and lit[: 4 * k].sum() == 0
    else:
        assert not inside.any()


def test_tap_saves_overlays_of_the_wire_map_for_defect_and_review_frames(tmp_path):
    codes = np.zeros((16, 16), np.uint8)
    codes[2:6, 2:6] = 200  # 200 x 0.005 = 1.0: twice the threshold, the scale's magenta end
    codes[10:14, 10:14] = 70  # 0.35: between half the threshold and it, drawn in faint blue-cyan
    info = MaskInfo(encoding="raw", height_px=16, width_px=16, kind="map", map_scale=0.005, map_offset=0.0)

    def script(pub):
        pub.frame("cam1", 0, verdict="defect", score=1.0, mask=codes.tobytes(), mask_info=info)
        pub.frame("cam1", 1, verdict="review", score=0.45, mask=codes.tobytes(), mask_info=info)
        pub.frame("cam1", 2, verdict="ok", score=0.1, mask=codes.tobytes(), mask_info=info)

    with WirePublisher() as pub:
        thread, errors = publish_in_background(pub, script, subscriptions=1)
        summary = run_tap(pub.endpoint, save_dir=tmp_path, frames=3, timeout_s=10, health=False, emit=lambda _: None, warn=lambda _: None)
        thread.join(timeout=5)
    assert not errors and summary.saved == 2 and summary.verdicts == {"ok": 1, "defect": 1, "review": 1, "unknown": 0}
    for seq in (0, 1):
        (saved,) = tmp_path.glob(f"cam1-*-000000000{seq}.png")
        img = cv2.imread(str(saved))
        k = img.shape[0] // 16
        hot, warm, cold = img[4 * k, 4 * k], img[12 * k, 12 * k], img[8 * k, k]
        assert hot[2] > 200 and hot[0] > 150 and hot[1] < 40, hot  # magenta: twice the threshold
        assert warm[0] > warm[2] + 30 and warm[1] > 50, warm  # below the threshold: blue-cyan, not the mask's red
        assert (cold == 28).all(), cold  # nothing drawn: the dark model grid
        assert json.loads(saved.with_suffix(".json").read_text())["mask"]["kind"] == "map"


def test_tap_over_curve_with_key_files(tmp_path):
    import zmq

    from edge.security import create_key_pair, load_key_pair

    if not zmq.has("curve"):
        pytest.skip("libzmq built without CURVE")
    server = create_key_pair(tmp_path, "daemon")
    client = create_key_pair(tmp_path, "tap")
    server_keys = load_key_pair(server.secret)

    def as_server(sock):
        sock.curve_server = True
        sock.curve_secretkey = server_keys.secret

    with WirePublisher(configure=as_server) as pub:
        thread, errors = publish_in_background(pub, lambda p: p.frame("cam1", 0), subscriptions=1)
        result = CliRunner().invoke(app, ["edge", "tap", pub.endpoint, "--frames", "1", "--timeout", "10", "--no-health",
                                          "--client-key", str(client.secret), "--server-key", str(server.public)])
        thread.join(timeout=5)
    assert not errors, errors
    assert result.exit_code == 0, result.output
    assert "cam1 seq=0 ok" in result.stdout
    half = CliRunner().invoke(app, ["edge", "tap", pub.endpoint, "--client-key", str(client.secret)])
    assert half.exit_code == 2 and "--server-key" in half.stderr
