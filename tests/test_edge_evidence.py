"""Schema 2 from a real daemon over real ZeroMQ: the quantised map, the uncertain band, drift, and that a
schema-1 subscriber still reads what the daemon sends by default."""

from __future__ import annotations

import shutil
import time
import urllib.request
from typing import Literal

import cv2
import msgspec
import numpy as np
import onnxruntime as ort
import pytest
import zmq
from test_edge_daemon import make_daemon, receive, run_in_thread, subscribe, write_images

from edge.client.subscriber import FrameEvent, Subscriber, decode_mask, evidence
from edge.manifest import Calibration, ScoreStats, read_manifest, write_manifest
from edge.wire import SCHEMA_VERSION, FrameHeader, Health


# --- the schema-1 structs, as a subscriber built against schema 1 has them -----------------------------
class MaskInfoV1(msgspec.Struct, frozen=True, kw_only=True):
    encoding: Literal["none", "raw", "png"] = "none"
    height_px: int = 0
    width_px: int = 0
    roi_x: int = 0
    roi_y: int = 0
    roi_w: int = 0
    roi_h: int = 0


class FrameHeaderV1(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="frame"):
    schema_version: int
    camera: str
    seq: int
    capture_ns: int
    publish_ns: int
    score: float
    threshold: float
    verdict: Literal["ok", "defect", "unknown"]
    model_id: str
    regions: list[dict] = []
    dropped: int = 0
    mask: MaskInfoV1 = MaskInfoV1()
    reason: str = ""
    pixel_threshold: float = 0.0
    source: str = ""


class CameraHealthV1(msgspec.Struct, frozen=True, kw_only=True):
    camera: str
    state: Literal["starting", "streaming", "reconnecting", "failed", "finished"]
    fps: float = 0.0
    frames_captured: int = 0
    frames_judged: int = 0
    frames_dropped: int = 0
    reconnects: int = 0
    skipped_files: int = 0
    last_error: str = ""


class HealthV1(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="health"):
    schema_version: int
    daemon: str
    seq: int
    time_ns: int
    period_s: float
    uptime_s: float
    backend: str
    model_id: str
    image_threshold: float
    cameras: list[CameraHealthV1] = []
    publish_dropped: int = 0


V1 = msgspec.msgpack.Decoder(FrameHeaderV1 | HealthV1)


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)

# Images whose scores on the tiny model lie far apart (flat grey scores ~0, low-contrast noise ~0.007,
# full noise ~0.13, black ~0.27); the test reads the real scores and places the thresholds between them.
IMAGES = {
    "a-grey.png": np.full((32, 32, 3), 128, np.uint8),
    "b-soft.png": np.random.default_rng(1).integers(100, 156, (32, 32, 3), dtype=np.uint8),
    "c-noise.png": np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8),
    "d-black.png": np.zeros((32, 32, 3), np.uint8),
}


def reference(bundle, images: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Scores and maps of a bare ONNX Runtime session: what the daemon must reproduce."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = sorted(images)
    maps, scores = session.run(["anomaly_map", "score"], {"frames": np.stack([images[n] for n in names])})
    return dict(zip(names, map(float, scores))), dict(zip(names, maps))


def calibrated(tiny_bundle, tmp_path, **fields):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = read_manifest(bundle)
    write_manifest(bundle, msgspec.structs.replace(manifest, calibration=Calibration(method="test", **fields)))
    return bundle


def drain(daemon, endpoint_sock, thread):
    """Every message until the daemon has exited: [(decoded with the schema-2 decoder, parts)]."""
    got = []
    while thread.is_alive() or endpoint_sock.poll(0):
        if (m := receive(endpoint_sock, 0.5)) is not None:
            got.append(m)
    thread.join(10)
    return got


def test_a_schema1_subscriber_reads_a_schema2_daemon_sending_mask_and_map(tiny_bundle, tmp_path, ctx):
    bundle = calibrated(tiny_bundle, tmp_path, image_threshold=1e6, pixel_threshold=0.001)
    folder = write_images(tmp_path / "imgs", {"c-noise.png": IMAGES["c-noise.png"]})
    daemon = make_daemon(bundle, [{"id": "cam", "source": str(folder)}], publish={"wait_for_subscriber_s": 10, "mask": "raw", "mask_kind": "both"})
    sub = subscribe(ctx, daemon.publisher.endpoints[0])
    thread, result = run_in_thread(daemon)
    messages = drain(daemon, sub, thread)
    assert result["code"] == 0
    (frame_parts,) = [parts for m, parts in messages if isinstance(m, FrameHeader)]
    health_parts = [parts for m, parts in messages if isinstance(m, Health)]
    old = V1.decode(frame_parts[1])  # ignores the keys it does not know
    assert old.schema_version == SCHEMA_VERSION == 2 and old.verdict == "ok" and old.mask.encoding == "raw"
    mask = np.frombuffer(frame_parts[2], np.uint8).reshape(old.mask.height_px, old.mask.width_px)
    assert set(np.unique(mask)) <= {0, 255} and mask.max() == 255, "part 3 is still the binary mask schema 1 describes"
    assert len(frame_parts) == 4, "the map travels as a fourth part, which schema 1 says to ignore"
    beat = V1.decode(health_parts[-1][1])
    assert beat.cameras[0].camera == "cam" and beat.cameras[0].frames_judged == 1
    new = msgspec.msgpack.decode(frame_parts[1], type=FrameHeader)
    assert new.map.kind == "map" and new.map.encoding == "raw" and new.map.map_scale > 0 and np.isnan(new.review_threshold)
    _, maps = reference(bundle, {"c-noise.png": IMAGES["c-noise.png"]})
    amap = decode_mask(new.map, frame_parts[3])
    assert np.abs(amap - maps["c-noise.png"]).max() <= new.map.map_scale / 2 * 1.001 + 1e-7


def test_the_map_round_trips_and_the_band_judges_review_between_the_thresholds(tiny_bundle, tmp_path):
    scores, maps = reference(tiny_bundle, IMAGES)
    s = sorted(scores.values())
    assert s[0] < s[1] < s[2] < s[3], scores
    review, image = (s[1] + s[2]) / 2, (s[2] + s[3]) / 2  # grey, soft: ok; noise: in the band; black: above
    bundle = calibrated(tiny_bundle, tmp_path, image_threshold=image, pixel_threshold=image, review_threshold=review)
    folder = write_images(tmp_path / "imgs", IMAGES)
    daemon = make_daemon(bundle, [{"id": "cam", "source": str(folder)}], publish={"wait_for_subscriber_s": 10, "mask": "png", "mask_kind": "map"})
    events: list[FrameEvent] = []
    with Subscriber(daemon.publisher.endpoints[0], masks=True, health=False) as sub:
        thread, result = run_in_thread(daemon)
        deadline = time.monotonic() + 20
        while len(events) < len(IMAGES) and time.monotonic() < deadline:
            if isinstance(event := sub.receive(0.5), FrameEvent):
                events.append(event)
        thread.join(10)
    assert result["code"] == 0 and len(events) == len(IMAGES)
    by_name = {e.header.source: e for e in events}
    verdicts = {name: by_name[name].header.verdict for name in sorted(IMAGES)}
    assert verdicts == {"a-grey.png": "ok", "b-soft.png": "ok", "c-noise.png": "review", "d-black.png": "defect"}
    for name, e in by_name.items():
        h = e.header
        assert h.review_threshold == pytest.approx(review) and h.threshold == pytest.approx(image)
        assert h.mask.kind == "map" and h.mask.encoding == "png" and h.map.encoding == "none" and e.map is None
        mask, amap = evidence(e)
        step = h.mask.map_scale
        assert mask is None and amap.dtype == np.float32 and amap.shape == (32, 32)
        assert step == pytest.approx((maps[name].max() - maps[name].min()) / 255, rel=1e-5), "the codes span the map's own range"
        assert np.abs(amap - maps[name]).max() <= step / 2 * 1.001 + 1e-7, f"{name}: off by more than half a step"


def test_drift_goes_high_when_good_scores_shift_up(tiny_bundle, tmp_path, ctx, caplog):
    rng = np.random.default_rng(7)
    soft = {f"{i}.png": rng.integers(100, 156, (32, 32, 3), dtype=np.uint8) for i in range(6)}  # as calibrated
    harsh = {f"{i}.png": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(6)}  # e.g. a lighting change
    good, _ = reference(tiny_bundle, soft)
    shifted, _ = reference(tiny_bundle, harsh)
    values = np.array(sorted(good.values()))
    assert min(shifted.values()) > values.max() * 2
    # A band from the lowest to the highest calibration score: the same images can only be "ok" in it.
    stats = ScoreStats(count=6, mean=float(values.mean()), std=float(values.std()), p50=float(values.min()), p99=float(values.max()), max=float(values.max()))
    bundle = calibrated(tiny_bundle, tmp_path, image_threshold=1e6, pixel_threshold=1e6, good_stats=stats)
    cameras = [
        {"id": "same", "source": str(write_images(tmp_path / "soft", soft)), "loop": True, "pace_fps": 40},
        {"id": "shifted", "source": str(write_images(tmp_path / "harsh", harsh)), "loop": True, "pace_fps": 40},
    ]
    daemon = make_daemon(bundle, cameras, drift={"window": 12, "quantile": 0.9}, metrics={"port": 0}, publish={"wait_for_subscriber_s": 10})
    sub = subscribe(ctx, daemon.publisher.endpoints[0])
    seen: dict[str, list[str]] = {"same": [], "shifted": []}
    last = {}
    with caplog.at_level("INFO"):
        thread, result = run_in_thread(daemon)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not (seen["same"][-1:] == ["ok"] and seen["shifted"][-1:] == ["high"]):
                if (m := receive(sub, 0.5)) is not None and isinstance(m[0], Health):
                    for c in m[0].cameras:
                        seen[c.camera].append(c.drift_state)
                        last[c.camera] = c
            port = daemon.metrics.server.server_address[1]
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        finally:
            daemon.request_stop()
            thread.join(10)
    assert result["code"] == 0
    assert seen["shifted"][-1] == "high" and seen["same"][-1] == "ok", seen
    assert "warming-up" in seen["shifted"][:3], "a window that is not full yet is not judged"
    assert last["shifted"].drift > 1 and 0 <= last["same"].drift <= 1
    assert 'ssae_good_score_drift_state{camera="shifted",state="high"} 1.0' in text
    assert 'ssae_good_score_drift_state{camera="same",state="ok"} 1.0' in text and 'ssae_good_score_drift{camera="shifted"}' in text
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "good parts score" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("camera shifted: good parts score high"), warnings


def test_a_png_map_keeps_its_codes(tmp_path):
    """The PNG of a map is lossless: decode_mask returns exactly offset + code x scale."""
    from edge.daemon.postprocess import encode_mask, quantise_map
    from edge.wire import MaskInfo

    amap = np.random.default_rng(3).random((20, 30), dtype=np.float32) * 0.4 + 0.1
    q = quantise_map(amap)
    info = MaskInfo(encoding="png", kind="map", height_px=20, width_px=30, map_scale=q.scale, map_offset=q.offset)
    decoded = decode_mask(info, encode_mask(q.codes, "png"))
    np.testing.assert_allclose(decoded, q.offset + q.codes.astype(np.float32) * q.scale, rtol=1e-6)
    assert np.abs(decoded - amap).max() <= q.scale / 2 * 1.001
    assert cv2.imdecode(np.frombuffer(encode_mask(q.codes, "png"), np.uint8), cv2.IMREAD_UNCHANGED).dtype == np.uint8


def test_a_band_sent_over_control_judges_review_and_a_band_above_the_threshold_is_refused(tiny_bundle, tmp_path):
    from edge.wire import ApplyThresholds

    scores, _ = reference(tiny_bundle, {"c-noise.png": IMAGES["c-noise.png"]})
    s = scores["c-noise.png"]
    folder = write_images(tmp_path / "imgs", {"c-noise.png": IMAGES["c-noise.png"]})
    daemon = make_daemon(tiny_bundle, [{"id": "cam", "source": str(folder)}], publish={"wait_for_subscriber_s": 10})
    refused = daemon.handle(ApplyThresholds(image_threshold=s * 2, review_threshold=s * 3))
    assert not refused.ok and "review threshold" in refused.message and daemon.model.thresholds.review is None
    assert daemon.handle(ApplyThresholds(image_threshold=s * 2, review_threshold=s / 2)).ok
    with Subscriber(daemon.publisher.endpoints[0], health=False) as sub:
        thread, result = run_in_thread(daemon)
        event = sub.receive(10)
        thread.join(10)
    assert result["code"] == 0 and isinstance(event, FrameEvent)
    assert event.header.verdict == "review" and event.header.review_threshold == pytest.approx(s / 2)
