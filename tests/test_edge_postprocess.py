"""Post-processing, the systemd notify protocol over a real AF_UNIX datagram socket, and the archive."""

from __future__ import annotations

import math
import os
import socket

import cv2
import msgspec
import numpy as np
import pytest

from edge.daemon.archive import Archive, Entry
from edge.daemon.config import ArchiveConfig
from edge.daemon.postprocess import Thresholds, encode_mask, find_regions, judge, resolve_thresholds
from edge.errors import UserError
from edge.manifest import Calibration
from edge.sdnotify import Notifier
from edge.wire import FrameHeader


def two_blobs() -> np.ndarray:
    amap = np.zeros((32, 32), np.float32)
    amap[2:6, 3:9] = 0.5  # 4x6 = 24 px
    amap[4, 5] = 0.9
    amap[20:22, 20:22] = 0.3  # 4 px
    amap[30, 30] = 0.4  # 1 px: noise
    return amap


def test_regions_largest_first_with_box_area_and_peak():
    mask, regions = find_regions(two_blobs(), 0.2, min_region_px=2, max_regions=8)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255} and (mask > 0).sum() == 29
    assert [(r.x, r.y, r.w, r.h, r.area_px) for r in regions] == [(3, 2, 6, 4, 24), (20, 20, 2, 2, 4)]
    assert regions[0].peak_score == pytest.approx(0.9) and regions[1].peak_score == pytest.approx(0.3)
    _, capped = find_regions(two_blobs(), 0.2, min_region_px=1, max_regions=1)
    assert len(capped) == 1 and capped[0].area_px == 24


def test_verdicts():
    amap = two_blobs()
    t = Thresholds(image=0.8, pixel=0.2, origin="config")
    assert judge(amap, 0.9, t).verdict == "defect"
    ok = judge(amap, 0.7, t)
    assert ok.verdict == "ok" and ok.reason == ""
    # A defect always names where: the peak's region is kept even below min_region_px.
    tiny = np.zeros((32, 32), np.float32)
    tiny[7, 9] = 0.95
    small = judge(tiny, 0.95, Thresholds(image=0.8, pixel=0.8, origin="config"), min_region_px=4)
    assert small.verdict == "defect" and [(r.x, r.y, r.area_px) for r in small.regions] == [(9, 7, 1)]
    assert judge(tiny, 0.95, Thresholds(image=1.0, pixel=0.8, origin="config"), min_region_px=4).regions == []
    uncal = judge(amap, 0.9, Thresholds(image=None, pixel=None, origin="uncalibrated"))
    assert uncal.verdict == "unknown" and uncal.reason.startswith("uncalibrated") and uncal.mask is None
    assert judge(amap, math.nan, t).verdict == "unknown"


def test_threshold_precedence():
    cal = Calibration(image_threshold=0.5, pixel_threshold=0.3, method="test")
    assert resolve_thresholds(cal) == Thresholds(image=0.5, pixel=0.3, origin="bundle calibration")
    assert resolve_thresholds(cal, 0.7) == Thresholds(image=0.7, pixel=0.3, origin="config")
    assert resolve_thresholds(None, 0.7) == Thresholds(image=0.7, pixel=0.7, origin="config")  # score = max(map)
    assert resolve_thresholds(None) == Thresholds(image=None, pixel=None, origin="uncalibrated")


def test_mask_encodings_round_trip():
    mask, _ = find_regions(two_blobs(), 0.2)
    assert encode_mask(mask, "raw") == mask.tobytes() and len(encode_mask(mask, "raw")) == 32 * 32
    png = encode_mask(mask, "png")
    assert np.array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE), mask)
    assert encode_mask(mask, "none") == b"" and encode_mask(None, "raw") == b""


def test_sd_notify_over_a_real_datagram_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(path)
        systemd.settimeout(2)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
        assert n.enabled and n.watchdog_s == 2.0
        assert n.ready("inspecting 1 camera(s)")
        assert systemd.recv(256) == b"READY=1\nSTATUS=inspecting 1 camera(s)"
        assert n.watchdog()
        assert systemd.recv(256) == b"WATCHDOG=1"
        assert n.stopping()
        assert systemd.recv(256) == b"STOPPING=1"
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_s is None  # meant for another process
    off = Notifier({})
    assert not off.enabled and not off.ready() and off.watchdog_s is None


def test_sd_notify_abstract_socket():
    name = f"ssae-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + name)
        systemd.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert systemd.recv(64) == b"WATCHDOG=1"


def header(seq: int, camera: str = "cam") -> FrameHeader:
    return FrameHeader(schema_version=1, camera=camera, seq=seq, capture_ns=1_700_000_000_000_000_000 + seq, publish_ns=0,
                       score=0.9, threshold=0.5, verdict="defect", model_id="m")


def test_archive_writes_whole_entries_and_keeps_the_quota(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # noise: ~3 kB as PNG
    mask = np.zeros((32, 32), np.uint8)
    mask[4:8, 4:8] = 255
    archive = Archive(ArchiveConfig(dir=str(tmp_path / "arch"), quota_mb=0.012))
    stem = archive.write(Entry(image, mask, header(0)))
    assert np.array_equal(cv2.imread(str(stem) + ".png", cv2.IMREAD_UNCHANGED), image)
    assert np.array_equal(cv2.imread(str(stem) + ".mask.png", cv2.IMREAD_GRAYSCALE), mask)
    assert msgspec.json.decode((stem.parent / (stem.name + ".json")).read_bytes(), type=FrameHeader) == header(0)
    for seq in range(1, 8):
        archive.write(Entry(image, mask, header(seq)))
    files = sorted(p.name for p in (tmp_path / "arch" / "cam").iterdir())
    kept = sorted({name.split(".")[0] for name in files})
    assert archive.deleted > 0 and archive.total_bytes <= archive.quota_bytes
    assert kept == [f"{header(s).capture_ns:019d}-{s:09d}" for s in range(8 - len(kept), 8)]  # the newest survive
    assert not any(name.endswith(".tmp") for name in files)
    # A restart accounts for what is already there, so the quota holds across runs.
    archive.close()  # the folder is locked while in use
    again = Archive(ArchiveConfig(dir=str(tmp_path / "arch"), quota_mb=0.012))
    assert again.total_bytes == archive.total_bytes and len(again.entries) == len(kept)
    again.close()


def test_archive_refuses_an_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="archive.dir = .*cannot write there"):
        Archive(ArchiveConfig(dir=str(blocker / "sub"), quota_mb=1))
