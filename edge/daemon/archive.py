"""Optional archive of judged frames (by default defects only): the evidence behind a reject.

Layout, one entry per frame, names sorting oldest first:
    <dir>/<camera>/<capture_ns:019d>-<seq:09d>.png        the camera frame as captured (before crop/resize)
    <dir>/<camera>/<capture_ns:019d>-<seq:09d>.mask.png   the defect mask on the model grid (absent if none)
    <dir>/<camera>/<capture_ns:019d>-<seq:09d>.json       the frame header as published (written last)

Every file is written atomically (temp file, fsync, rename), so a power cut leaves whole files. Beyond
`quota_mb` (1 MB = 10^6 bytes) the oldest entries are deleted first. Writing happens on its own thread
behind a bounded queue: a slow disk skips archive entries (counted, logged), never inference.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
from pathlib import Path
from typing import NamedTuple

import cv2
import msgspec
import numpy as np

from edge.daemon.config import ArchiveConfig
from edge.errors import UserError
from edge.files import atomic_write_bytes
from edge.wire import FrameHeader

log = logging.getLogger("edge.archive")
SUFFIXES = (".png", ".mask.png", ".json")


class Entry(NamedTuple):
    image: np.ndarray
    mask: np.ndarray | None
    header: FrameHeader


class Archive:
    def __init__(self, cfg: ArchiveConfig):
        self.cfg = cfg
        self.dir = Path(cfg.dir).expanduser()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise UserError(f"archive.dir = {cfg.dir!r}: cannot write there ({e.strerror}); create it with write access for the daemon's user or choose another folder") from None
        self.quota_bytes = int(cfg.quota_mb * 1_000_000)
        self.queue: queue.Queue[Entry] = queue.Queue(maxsize=cfg.queue_size)
        self.stop_event = threading.Event()
        self.entries: collections.deque[tuple[str, Path, int]] = collections.deque()  # (sort key, stem, bytes), oldest first
        self.total_bytes = 0
        self.written = self.deleted = self.skipped = self.failed = 0
        self._scan()
        self.thread = threading.Thread(name="archive", target=self._run, daemon=True)

    def _scan(self) -> None:
        """Account for what earlier runs left, so the quota holds across restarts; clear stale temp files."""
        groups: dict[Path, int] = {}
        for camera_dir in (p for p in self.dir.iterdir() if p.is_dir()):
            for f in camera_dir.iterdir():
                if f.name.startswith(".") and f.name.endswith(".tmp"):
                    f.unlink(missing_ok=True)  # a write cut short by a crash
                    continue
                stem = next((camera_dir / f.name[: -len(s)] for s in SUFFIXES[::-1] if f.name.endswith(s)), None)
                if stem is not None and f.is_file():
                    groups[stem] = groups.get(stem, 0) + f.stat().st_size
        for stem, size in sorted(groups.items(), key=lambda kv: kv[0].name):
            self.entries.append((stem.name, stem, size))
            self.total_bytes += size
        self._enforce_quota()

    # --- called from the inference thread --------------------------------------------------------------
    def wants(self, verdict: str) -> bool:
        return verdict in self.cfg.verdicts

    def submit(self, entry: Entry) -> bool:
        try:
            self.queue.put_nowait(entry)
            return True
        except queue.Full:
            self.skipped += 1
            log.warning("archive behind: skipped %s seq %d (queue of %d full)", entry.header.camera, entry.header.seq, self.cfg.queue_size)
            return False

    # --- lifetime -------------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float) -> bool:
        if self.thread.ident is not None:
            self.thread.join(timeout)
        return not self.thread.is_alive()

    def _run(self) -> None:
        while True:
            try:
                entry = self.queue.get(timeout=0.1)
            except queue.Empty:
                if self.stop_event.is_set():
                    return
                continue
            try:
                self.write(entry)
            except OSError as e:
                self.failed += 1
                log.error("archive: cannot write %s seq %d: %s", entry.header.camera, entry.header.seq, e)

    def write(self, entry: Entry) -> Path:
        h = entry.header
        camera_dir = self.dir / h.camera
        camera_dir.mkdir(exist_ok=True)
        stem = camera_dir / f"{h.capture_ns:019d}-{h.seq:09d}"
        size = 0
        ok, png = cv2.imencode(".png", entry.image)
        if not ok:
            raise OSError(f"OpenCV could not encode the frame of {h.camera} seq {h.seq} as PNG")
        atomic_write_bytes(stem.with_name(stem.name + ".png"), png.tobytes())
        size += len(png)
        if entry.mask is not None:
            ok, mask_png = cv2.imencode(".png", entry.mask)
            if ok:
                atomic_write_bytes(stem.with_name(stem.name + ".mask.png"), mask_png.tobytes())
                size += len(mask_png)
        body = msgspec.json.format(msgspec.json.encode(h), indent=2)
        atomic_write_bytes(stem.with_name(stem.name + ".json"), body)  # last: a JSON means the entry is whole
        size += len(body)
        self.entries.append((stem.name, stem, size))
        self.total_bytes += size
        self.written += 1
        self._enforce_quota()
        return stem

    def _enforce_quota(self) -> None:
        while self.total_bytes > self.quota_bytes and self.entries:
            _, stem, size = self.entries.popleft()
            for suffix in SUFFIXES:
                try:
                    os.unlink(stem.with_name(stem.name + suffix))
                except FileNotFoundError:
                    pass
            self.total_bytes -= size
            self.deleted += 1
