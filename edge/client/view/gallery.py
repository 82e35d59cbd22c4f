"""Recent rejects from the daemon's archive, read-only, addressed only by entry id.

The archive (edge/daemon/archive.py) keeps one entry per frame, `<dir>/<camera>/<capture_ns:019d>-<seq:09d>`
with `.png` (the camera frame), `.mask.png` (the mask on the model grid) and `.json` (the header, written
last: a JSON means the entry is whole). An entry's id is `<camera>/<capture_ns:019d>-<seq:09d>`; ids from the
browser are matched against that pattern and turned into paths only by this module, so no request can
name a file outside the archive.

Files of schema-2 archives, used when present: `.overlay.png` (the daemon's own overlay, shown as is) and
`.map.png` (the 8-bit quantised anomaly map; its scale in the header's `map`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

import cv2
import msgspec
import numpy as np

from edge.overlay import dequantise, encode_png, render_overlay
from edge.wire import FrameHeader

CAMERA = re.compile(r"^[a-z0-9_-]{1,64}$")  # the daemon config's camera id pattern
STEM = re.compile(r"^\d{19}-\d{9}$")
ENTRY_ID = re.compile(r"^([a-z0-9_-]{1,64})/(\d{19}-\d{9})$")
REJECT_VERDICTS = ("defect", "review")  # "review": between the two thresholds of an uncertain band


class ArchiveEntry(NamedTuple):
    id: str
    stem: Path  # <dir>/<camera>/<capture_ns>-<seq>, without suffix
    header: FrameHeader
    raw: dict  # the JSON as stored: keeps header fields this version of the wire does not know (map scale)

    def file(self, suffix: str) -> Path:
        return self.stem.with_name(self.stem.name + suffix)


def entry_id(camera: str, capture_ns: int, seq: int) -> str:
    return f"{camera}/{capture_ns:019d}-{seq:09d}"


class Gallery:
    def __init__(self, archive_dir: Path, *, verdicts: tuple[str, ...] = REJECT_VERDICTS, max_reads: int = 2000):
        self.dir = Path(archive_dir)
        self.verdicts = verdicts
        self.max_reads = max_reads  # JSON files read per listing at most, newest first (an archive may hold ok frames)
        self._cache: dict[Path, tuple[int, ArchiveEntry | None]] = {}  # json path -> (mtime_ns, entry)

    # --- listing ---------------------------------------------------------------------------------------
    def recent(self, limit: int = 48) -> list[ArchiveEntry]:
        """The newest `limit` rejects across cameras, newest first."""
        names: list[tuple[str, str]] = []  # (stem name, camera): names sort by capture time
        try:
            cameras = [d.name for d in os.scandir(self.dir) if d.is_dir() and CAMERA.match(d.name)]
        except FileNotFoundError:
            return []
        for camera in cameras:
            with os.scandir(self.dir / camera) as it:
                names += [(f.name[:-5], camera) for f in it if f.name.endswith(".json") and STEM.match(f.name[:-5])]
        names.sort(reverse=True)
        found: list[ArchiveEntry] = []
        for stem, camera in names[: self.max_reads]:
            e = self._read(self.dir / camera / f"{stem}.json", f"{camera}/{stem}")
            if e is not None and e.header.verdict in self.verdicts:
                found.append(e)
                if len(found) >= limit:
                    break
        if len(self._cache) > 4 * self.max_reads:
            self._cache.clear()
        return found

    def entry(self, entry_id: str) -> ArchiveEntry:
        """The archive entry of an id from the browser; LookupError when malformed or absent."""
        m = ENTRY_ID.match(entry_id)
        if m is None:
            raise LookupError(f"{entry_id!r} is not an archive entry id (<camera>/<capture_ns>-<seq>)")
        e = self._read(self.dir / m[1] / f"{m[2]}.json", entry_id)
        if e is None:
            raise LookupError(f"archive entry {entry_id} is not there (deleted by the archive's quota?)")
        return e

    def _read(self, path: Path, eid: str) -> ArchiveEntry | None:
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        hit = self._cache.get(path)
        if hit is not None and hit[0] == mtime:
            return hit[1]
        try:
            raw = msgspec.json.decode(path.read_bytes())
            header = msgspec.convert(raw, FrameHeader)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            entry = None  # unreadable JSON: not a whole entry; listed by nobody, counted by nobody
        else:
            entry = ArchiveEntry(eid, path.with_suffix(""), header, raw) if header.camera == eid.split("/")[0] else None
        self._cache[path] = (mtime, entry)
        return entry

    # --- pictures ---------------------------------------------------------------------------------------
    def frame_path(self, camera: str, capture_ns: int, seq: int) -> Path | None:
        """The archived camera frame of a live frame, when the daemon archived it (written atomically: whole)."""
        if not CAMERA.match(camera):
            return None
        path = self.dir / camera / f"{capture_ns:019d}-{seq:09d}.png"
        return path if path.is_file() else None

    def overlay_png(self, e: ArchiveEntry) -> bytes:
        """The daemon's overlay when the archive has one, else the evidence drawn over the archived frame."""
        own = e.file(".overlay.png")
        if own.is_file():
            return own.read_bytes()
        image = _imread(e.file(".png"), cv2.IMREAD_UNCHANGED)
        return encode_png(render_overlay(e.header, mask=_imread(e.file(".mask.png"), cv2.IMREAD_GRAYSCALE),
                                         amap=archived_map(e), image=image))


def archived_map(e: ArchiveEntry) -> np.ndarray | None:
    """The archive's quantised map (`.map.png`) in model units, when present with a scale in the header.

    The archive describes it in the header's `map` (schema 2); a header of the "map" wire mode also in `mask`."""
    codes = _imread(e.file(".map.png"), cv2.IMREAD_GRAYSCALE)
    described = [part for part in (e.raw.get("map"), e.raw.get("mask")) if isinstance(part, dict) and part.get("kind") == "map"]
    mask = described[0] if described else (e.raw.get("mask") if isinstance(e.raw.get("mask"), dict) else {})
    scale = mask.get("map_scale")
    if codes is None or not isinstance(scale, (int, float)) or scale <= 0:
        return None
    return dequantise(codes, float(scale), float(mask.get("map_offset") or 0.0))


def _imread(path: Path, flags: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    return cv2.imread(str(path), flags)

