"""The view subscribes like any other client: a real (CURVE) publisher, a real uvicorn, plain HTTP reads."""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the view extra is not installed (pip install 'ssae-inspect[view]')")

from edge.client.view.server import ViewServer  # noqa: E402
from edge.security import SecurityConfig, create_key_pair, curve_client_from_files, start_server_security  # noqa: E402
from edge.wire import CameraHealth, MaskInfo  # noqa: E402
from viewpage import wait_until  # noqa: E402
from wirepub import WirePublisher  # noqa: E402

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def curve(tmp_path):
    """A publisher secured as the daemon secures its PUB socket (security.curve = true), and the view's keys."""
    server = create_key_pair(tmp_path / "keys", "daemon")
    client = create_key_pair(tmp_path / "keys", "view")
    allow = tmp_path / "allowed"
    allow.mkdir()
    (allow / "view.key").write_bytes(client.public.read_bytes())
    started = []

    def secure(sock):
        sec = start_server_security(sock.context, SecurityConfig(curve=True, server_secret_key=str(server.secret), allowed_clients=str(allow)))
        sec.secure(sock)
        started.append(sec)

    pub = WirePublisher(configure=secure)
    yield {"server": server, "client": client, "pub": pub}
    pub.sock.close(linger=0)
    for sec in started:
        sec.stop()  # the authenticator's sockets go before the context is terminated
    pub.context.term()


def first_snapshot(url: str) -> dict:
    with urllib.request.urlopen(url + "events", timeout=5) as r:
        for line in r:
            if line.startswith(b"data: "):
                return json.loads(line[6:])
    raise AssertionError("the event stream ended without a snapshot")


def test_an_encrypted_stream_reaches_the_view_with_its_keys(curve):
    configure = curve_client_from_files(curve["client"].secret, curve["server"].public)
    pub = curve["pub"]
    with ViewServer([pub.endpoint], port=0, configure=configure, tick_s=0.05) as view:
        pub.wait_for_subscribers(2)
        mask = np.zeros((16, 16), np.uint8)
        mask[2:6, 2:6] = 255
        pub.health(0, period_s=1.0, cameras=[CameraHealth(camera="cam1", state="streaming", fps=5.0)])
        pub.frame("cam1", 7, verdict="defect", score=0.8, mask=mask.tobytes(), mask_info=MaskInfo(encoding="raw", height_px=16, width_px=16))
        snap = wait_until(lambda: (s := first_snapshot(view.url))["cameras"] and s["cameras"][0].get("seq") == 7 and s,
                          timeout_s=5, what="frame 7 in the view's snapshot")
        cam = snap["cameras"][0]
        assert cam["status"] == "ok" and cam["verdict"] == "defect" and cam["fps"] == 5.0
        with urllib.request.urlopen(view.url + "live/cam1/overlay.png", timeout=5) as r:
            assert r.headers["Content-Type"] == "image/png" and r.read(8) == b"\x89PNG\r\n\x1a\n"


def test_without_the_keys_the_view_hears_nothing_and_says_so(curve):
    pub = curve["pub"]
    with ViewServer([pub.endpoint], port=0, tick_s=0.05) as view:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            pub.health(0, period_s=0.2)
            time.sleep(0.1)
        snap = first_snapshot(view.url)
        assert snap["heard_any"] is False and snap["daemons"] == []


def test_a_live_frame_the_daemon_archived_is_drawn_over_its_camera_image(tmp_path):
    import cv2

    from viewpage import header, write_archive

    capture_ns = time.time_ns()
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255
    write_archive(tmp_path / "archive", [(header(seq=3, capture_ns=capture_ns), mask)])
    info = MaskInfo(encoding="raw", height_px=32, width_px=32, roi_x=0, roi_y=0, roi_w=96, roi_h=64)
    with WirePublisher() as pub, ViewServer([pub.endpoint], port=0, archive=tmp_path / "archive", tick_s=0.05) as view:
        pub.wait_for_subscribers(2)
        pub.health(0)
        pub.frame("cam1", 3, verdict="defect", capture_ns=capture_ns, mask=mask.tobytes(), mask_info=info)
        pub.frame("cam2", 4, verdict="defect", mask=mask.tobytes(), mask_info=info)  # not archived
        wait_until(lambda: {c["camera"]: c.get("seq") for c in first_snapshot(view.url)["cameras"]} == {"cam1": 3, "cam2": 4},
                   timeout_s=5, what="both frames in the view")
        pictures = {}
        for cam in ("cam1", "cam2"):
            with urllib.request.urlopen(view.url + f"live/{cam}/overlay.png", timeout=5) as r:
                pictures[cam] = cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR)
    photo = pictures["cam1"]
    assert photo.shape == (64, 96, 3), "drawn over the archived 96x64 camera frame"
    assert abs(int(photo[32, 20, 0]) - 120) <= 2 and photo[32, 70, 2] > 180  # left untouched, right half tinted
    assert pictures["cam2"].shape == (256, 256, 3), "no archived frame: the model grid, scaled up"
