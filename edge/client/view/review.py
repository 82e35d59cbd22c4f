"""The review folder: rejects an operator has marked, copied out of the archive for recalibration and training.

    <review>/false_reject/<camera>-<capture_ns:019d>-<seq:09d>.png    a good part the line rejected
    <review>/false_reject/<camera>-<capture_ns:019d>-<seq:09d>.json   its header, the mark and when it was made
    <review>/confirmed/<camera>-<capture_ns:019d>-<seq:09d>.png       a reject the operator confirms defective
    <review>/confirmed/<camera>-<capture_ns:019d>-<seq:09d>.json

Each label folder holds its images directly, which is what `ssae calibrate fit --good <review>/false_reject
--defect <review>/confirmed` and `ssae train fit <review>/false_reject` read (they take image files and
ignore the .json beside them). The image is the archived camera frame, byte for byte, as captured (before
the camera's crop), so give calibrate the edge config's `--crop`.

Files are copied, never moved: the archive keeps its entry. Nothing here is ever overwritten: each file is
written to a temp file and hard-linked to its name, which fails if the name exists; a frame marked once
keeps its mark (delete the file by hand to change it).
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from edge.client.view.gallery import ArchiveEntry
from edge.errors import UserError
from edge.files import write_new_bytes

LABELS = ("false_reject", "confirmed")


class MarkRefused(Exception):
    """A mark that would overwrite or contradict what the review folder holds; the message says what to do."""


class Marked(msgspec.Struct, frozen=True, kw_only=True):
    label: str
    path: str
    already: bool = False  # the frame had this mark before: nothing was written


class Review:
    def __init__(self, folder: Path):
        self.dir = Path(folder)
        try:
            for label in LABELS:
                (self.dir / label).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--review {folder}: cannot create its folders ({e.strerror}); choose a folder you can write to") from None

    @staticmethod
    def name(e: ArchiveEntry) -> str:
        return f"{e.header.camera}-{e.stem.name}"  # unique across cameras; sorts by camera, then capture time

    def mark_of(self, e: ArchiveEntry) -> str | None:
        n = self.name(e) + ".png"
        return next((label for label in LABELS if (self.dir / label / n).exists()), None)

    def mark(self, e: ArchiveEntry, label: str) -> Marked:
        """Copy the entry's frame (and a JSON record) into the label's folder; MarkRefused when that would overwrite."""
        if label not in LABELS:
            raise MarkRefused(f"label {label!r} is unknown; use {' or '.join(LABELS)}")
        source = e.file(".png")
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            raise MarkRefused(f"archive entry {e.id} has no frame image (deleted by the archive's quota?)") from None
        target = self.dir / label / (self.name(e) + ".png")
        other = next((lb for lb in LABELS if lb != label and (self.dir / lb / target.name).exists()), None)
        if other is not None:
            raise MarkRefused(f"{e.id} is already marked {other} ({self.dir / other / target.name}); delete that file to change its mark")
        if target.exists():
            if target.read_bytes() == data:
                return Marked(label=label, path=str(target), already=True)
            raise MarkRefused(f"{target} exists and is another image; not overwritten (move it away to mark this frame)")
        record = {"label": label, "marked_ns": time.time_ns(), "archive_entry": e.id, "header": e.raw}
        try:
            write_new_bytes(target, data)
        except FileExistsError:  # marked a moment ago by another browser tab
            raise MarkRefused(f"{target} appeared while marking; not overwritten") from None
        try:
            write_new_bytes(target.with_suffix(".json"), msgspec.json.format(msgspec.json.encode(record), indent=2) + b"\n")
        except FileExistsError:
            pass  # a record of an earlier mark of this name stays as it was
        return Marked(label=label, path=str(target))
