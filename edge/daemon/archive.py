"""Optional archive of judged frames (by default defects only): the evidence behind a reject.

Layout, one entry per frame, names sorting oldest first:
    <dir>/<camera>/<capture_ns:019d>-<seq:09d>.png        the camera frame as captured (before crop/resize)
    <dir>/<camera>/<capture_ns:019d>-<seq:09d>.mask.png   the defect mask on the model grid (absent if none)
    <dir>/<camera>/<capture_ns:019d>-<seq:09d>.map.png    the anomaly map, 8-bit quantised (absent if not scored)
    <dir>/<camera>/<capture_ns:019d>-<seq:09d>.overlay.png  the frame with the map (else the mask) drawn over it
    <dir>/<camera>/<capture_ns:019d>-<seq:09d>.json       the frame header as published (written last); its
                                                          `map` describes .map.png: value = map_offset + code x map_scale
    <dir>/.ssae-archive-index                             which of those files this archive wrote

`archive.dir` may be a folder that already holds other files: the archive never replaces a file, and
beyond `quota_mb` (1 MB = 10^6 bytes) it deletes its own entries, oldest first, and nothing else. What is
its own is what the index lists: an entry's line ("+ cam/stem .png .json") is appended before its first
file is written and a "-" line after its files are deleted (JSON first), so after a crash in the middle of
either the index still names the entry, and the next start removes what the torn entry left (its files
and temp files). A file the index does not list is never touched. The folder is locked (flock) while a
daemon uses it: two daemons cannot share one.

Every file is written atomically (temp file, fsync, rename), so a power cut leaves whole files. Writing
happens on its own thread behind a bounded queue: a slow disk skips archive entries (counted, logged),
never inference; a full disk fails them (counted, logged once a minute with a count).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import queue
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import cv2
import msgspec
import numpy as np

from edge.daemon.config import ArchiveConfig
from edge.daemon.postprocess import quantise_map
from edge.daemon.threads import Threaded
from edge.errors import UserError
from edge.files import atomic_write_bytes, write_new_bytes
from edge.overlay import render_overlay
from edge.ratelimit import RateLimitedLog
from edge.wire import FrameHeader, header_json

log = logging.getLogger("edge.archive")
SUFFIXES = (".png", ".mask.png", ".map.png", ".overlay.png", ".json")
INDEX_NAME = ".ssae-archive-index"
INDEX_HEADER = "# ssae archive index 1: the entries this archive wrote; its quota deletes only these\n"


class Entry(NamedTuple):
    image: np.ndarray
    mask: np.ndarray | None
    header: FrameHeader
    amap: np.ndarray | None = None  # float32 (H, W) anomaly map on the model grid; None when not scored


class Stored(NamedTuple):
    rel: str  # "<camera>/<stem>", as the index names it
    suffixes: tuple[str, ...]  # the files of the entry this archive wrote
    size: int  # their bytes


class Index:
    """The append-only list of entries this archive wrote, in `<dir>/.ssae-archive-index`; locks `dir`."""

    def __init__(self, folder: Path):
        self.path = folder / INDEX_NAME
        self.lock_fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.lock_fd)
            raise UserError(f"archive.dir = {str(folder)!r} is in use by another running daemon; give each daemon its own archive folder") from None
        self.fd = -1
        self.lines = 0

    def read(self) -> list[Stored]:
        """The entries listed and not deleted, oldest first (sizes still 0). A torn last line is ignored."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        if not text.startswith(INDEX_HEADER):
            raise UserError(
                f"archive.dir: {self.path} exists but is not an ssae archive index; move it away or choose another archive folder"
            )
        live: dict[str, tuple[str, ...]] = {}
        for line in text[len(INDEX_HEADER) :].split("\n")[:-1]:  # the part after the last newline is torn or empty
            op, _, rest = line.partition(" ")
            rel, *suffixes = rest.split(" ")
            if op == "+" and suffixes and all(s in SUFFIXES for s in suffixes):
                live[rel] = tuple(suffixes)
            elif op == "-":
                live.pop(rel, None)
        return [Stored(rel, suffixes, 0) for rel, suffixes in live.items()]

    def rewrite(self, entries: Iterable[Stored]) -> None:
        """Replace the index by exactly these entries (atomically), then append from there."""
        body = "".join(f"+ {e.rel} {' '.join(e.suffixes)}\n" for e in entries)
        atomic_write_bytes(self.path, (INDEX_HEADER + body).encode())
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.lines = body.count("\n")

    def add(self, rel: str, suffixes: tuple[str, ...]) -> None:
        os.write(self.fd, f"+ {rel} {' '.join(suffixes)}\n".encode())
        os.fsync(self.fd)  # listed before the first file exists: a crash never leaves files nobody owns
        self.lines += 1

    def remove(self, rel: str) -> None:
        os.write(self.fd, f"- {rel}\n".encode())  # lost in a crash: the restart finds the files gone
        self.lines += 1

    def close(self) -> None:
        for fd in (self.fd, self.lock_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.lock_fd = -1


class Archive(Threaded):
    def __init__(self, cfg: ArchiveConfig):
        self.cfg = cfg
        self.dir = Path(cfg.dir).expanduser()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".ssae-write-test.", dir=self.dir)  # a name no other file has
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise UserError(f"archive.dir = {cfg.dir!r}: cannot write there ({e.strerror}); create it with write access for the daemon's user or choose another folder") from None
        self.quota_bytes = int(cfg.quota_mb * 1_000_000)
        self.queue: queue.Queue[Entry] = queue.Queue(maxsize=cfg.queue_size)
        self.entries: collections.deque[Stored] = collections.deque()  # oldest first
        self.total_bytes = 0
        self.written = self.deleted = self.skipped = self.failed = 0
        self.errors = RateLimitedLog(log)
        self.index = Index(self.dir)
        try:
            self._scan()
        except BaseException:
            self.index.close()
            raise
        super().__init__("archive", owned=[self.index])

    def close(self) -> None:
        """Release the folder when the thread never ran (it closes the index itself)."""
        self.index.close()

    def _scan(self) -> None:
        """Account for what earlier runs wrote, so the quota holds across restarts; clear their torn writes."""
        listed = self.index.read()
        by_camera: dict[str, set[str]] = collections.defaultdict(set)
        for e in listed:
            camera, _, stem = e.rel.partition("/")
            by_camera[camera].add(stem)
        for camera, stems in by_camera.items():  # temp files of an indexed entry: a write cut short by a crash
            folder = self.dir / camera
            for f in folder.iterdir() if folder.is_dir() else ():
                if f.name.startswith(".") and f.name.endswith(".tmp") and f.name[1:].split(".")[0] in stems:
                    f.unlink(missing_ok=True)
        for e in listed:
            if not (self.dir / f"{e.rel}.json").is_file():  # torn by a crash (the JSON comes last): remove the rest
                for s in e.suffixes:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.dir / f"{e.rel}{s}")
                continue
            present = tuple(s for s in e.suffixes if (self.dir / f"{e.rel}{s}").is_file())
            size = sum(_size(self.dir / f"{e.rel}{s}") for s in present)
            self.entries.append(Stored(e.rel, present, size))
            self.total_bytes += size
        self.index.rewrite(self.entries)
        foreign = _count_foreign(self.dir, {f"{e.rel}{s}" for e in self.entries for s in e.suffixes})
        if foreign:
            log.info("archive.dir %s holds %d file(s) the archive did not write: they are left alone and not counted in quota_mb", self.dir, foreign)
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
            self.errors.log("behind", logging.WARNING, "archive behind: skipped %s seq %d (queue of %d full)", entry.header.camera, entry.header.seq, self.cfg.queue_size)
            return False

    # --- the thread -------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                try:
                    entry = self.queue.get(timeout=0.1)
                except queue.Empty:
                    self.errors.tick()
                    if self.stop_event.is_set():
                        return
                    continue
                try:
                    self.write(entry)
                except OSError as e:
                    self.failed += 1
                    self.errors.log("write", logging.ERROR, "archive: cannot write %s seq %d: %s", entry.header.camera, entry.header.seq, e)
        finally:
            self.errors.flush()

    def write(self, entry: Entry) -> Path:
        """Write one entry (never over an existing file); on failure what it wrote is removed again."""
        h = entry.header
        camera_dir = self.dir / h.camera
        camera_dir.mkdir(exist_ok=True)
        stem = camera_dir / f"{h.capture_ns:019d}-{h.seq:09d}"
        ok, png = cv2.imencode(".png", entry.image)
        if not ok:
            raise OSError(f"OpenCV could not encode the frame of {h.camera} seq {h.seq} as PNG")
        files = {".png": png.tobytes()}
        if entry.mask is not None:
            ok, mask_png = cv2.imencode(".png", entry.mask)
            if ok:
                files[".mask.png"] = mask_png.tobytes()
        if entry.amap is not None:
            q = quantise_map(entry.amap)
            ok, map_png = cv2.imencode(".png", q.codes)
            if ok:
                files[".map.png"] = map_png.tobytes()
                h = msgspec.structs.replace(h, map=msgspec.structs.replace(h.mask, encoding="png", kind="map", map_scale=q.scale, map_offset=q.offset))
        if entry.amap is not None or entry.mask is not None:
            ok, overlay_png = cv2.imencode(".png", render_overlay(h, mask=entry.mask, amap=entry.amap, image=entry.image))
            if ok:
                files[".overlay.png"] = overlay_png.tobytes()
        files[".json"] = header_json(h)  # last: a JSON means the entry is whole
        taken = [s for s in files if os.path.lexists(f"{stem}{s}")]
        if taken:
            raise FileExistsError(f"{stem}{taken[0]} exists and is not the archive's; it is left alone")
        rel = f"{h.camera}/{stem.name}"
        self.index.add(rel, tuple(files))
        done: list[str] = []
        try:
            for suffix, data in files.items():
                write_new_bytes(Path(f"{stem}{suffix}"), data)
                done.append(suffix)
        except BaseException:
            for suffix in done:
                with contextlib.suppress(OSError):
                    os.unlink(f"{stem}{suffix}")
            self.index.remove(rel)  # may fail on a full disk too: the next start finds the files gone
            raise
        size = sum(len(d) for d in files.values())
        self.entries.append(Stored(rel, tuple(files), size))
        self.total_bytes += size
        self.written += 1
        self._enforce_quota()
        return stem

    def _enforce_quota(self) -> None:
        while self.total_bytes > self.quota_bytes and self.entries:
            e = self.entries.popleft()
            for suffix in sorted(e.suffixes, key=lambda s: s != ".json"):  # JSON first: a cut-short delete reads as a torn write
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.dir / f"{e.rel}{suffix}")
            self.index.remove(e.rel)
            self.total_bytes -= e.size
            self.deleted += 1
        if self.index.lines > 2 * len(self.entries) + 1000:  # mostly "-" lines by now: start a fresh one
            self.index.rewrite(self.entries)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


def _count_foreign(folder: Path, own: set[str]) -> int:
    """Files in the archive folder and its camera folders that the index does not list."""
    count = 0
    for top in folder.iterdir():
        if top.is_dir():
            count += sum(1 for f in top.iterdir() if f"{top.name}/{f.name}" not in own)
        elif top.name != INDEX_NAME:
            count += 1
    return count
