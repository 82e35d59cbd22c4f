"""The archive in a real folder that already holds a user's files: its quota deletes only what it wrote,
across restarts and after a real SIGKILL in the middle of writing."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge.daemon.archive import INDEX_NAME, Archive, Entry
from edge.daemon.config import ArchiveConfig
from edge.errors import UserError
from edge.wire import FrameHeader

ROOT = Path(__file__).resolve().parents[1]


def header(seq: int, camera: str = "cam") -> FrameHeader:
    return FrameHeader(schema_version=1, camera=camera, seq=seq, capture_ns=1_700_000_000_000_000_000 + seq, publish_ns=0,
                       score=0.9, threshold=0.5, verdict="defect", model_id="m")


def entry(seq: int, camera: str = "cam") -> Entry:
    image = np.random.default_rng(seq).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # noise: ~3 kB as PNG
    return Entry(image, None, header(seq, camera))


def user_files(site: Path) -> dict[str, str]:
    """A folder as a user had it: photos, and in cam/ files named exactly like archive entries."""
    files = {
        "photo.jpg": b"\xff\xd8 holiday",
        "cam/old-part.png": b"\x89PNG a user's image",
        "cam/1600000000000000000-000000001.png": b"\x89PNG named like an archive entry, older than any",
        "cam/1600000000000000000-000000001.json": b"{}",
        "other/notes.txt": b"keep me",
    }
    for name, data in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_bytes(data)
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def unchanged(site: Path, expected: dict[str, str]) -> bool:
    return all((site / n).is_file() and hashlib.sha256((site / n).read_bytes()).hexdigest() == h for n, h in expected.items())


def own_stems(site: Path) -> list[str]:
    return sorted({p.name.split(".")[0] for p in (site / "cam").iterdir() if p.name.startswith("17")})


def test_the_quota_deletes_only_what_the_archive_wrote_also_after_a_restart(tmp_path):
    site = tmp_path / "site"
    mine = user_files(site)
    cfg = ArchiveConfig(dir=str(site), quota_mb=0.012)  # room for ~3 entries
    archive = Archive(cfg)
    for seq in range(10):
        archive.write(entry(seq))
    assert archive.deleted >= 6 and archive.total_bytes <= archive.quota_bytes
    assert unchanged(site, mine), "the quota deleted a file the archive did not write"
    kept = own_stems(site)
    assert kept == [f"{header(s).capture_ns:019d}-{s:09d}" for s in range(10 - len(kept), 10)]  # the newest survive
    archive.close()

    again = Archive(cfg)  # a restart: what the last run wrote still counts, the user's files still don't
    assert again.total_bytes == archive.total_bytes and len(again.entries) == len(kept)
    for seq in range(10, 16):
        again.write(entry(seq))
    assert unchanged(site, mine) and again.total_bytes <= again.quota_bytes
    assert own_stems(site)[-1].endswith("-000000015") and f"{header(9).capture_ns:019d}-000000009" not in own_stems(site)
    again.close()


def test_an_existing_file_is_never_replaced(tmp_path):
    site = tmp_path / "site"
    taken = site / "cam" / f"{header(3).capture_ns:019d}-000000003.png"
    taken.parent.mkdir(parents=True)
    taken.write_bytes(b"the user's")
    archive = Archive(ArchiveConfig(dir=str(site), quota_mb=1))
    with pytest.raises(FileExistsError, match="left alone"):
        archive.write(entry(3))
    assert taken.read_bytes() == b"the user's" and sorted(p.name for p in taken.parent.iterdir()) == [taken.name]
    archive.close()


WRITER = """
import sys
import numpy as np
from edge.daemon.archive import Archive, Entry
from edge.daemon.config import ArchiveConfig
from edge.wire import FrameHeader
archive = Archive(ArchiveConfig(dir=sys.argv[1], quota_mb=0.02))
seq = int(sys.argv[2])
while True:  # until killed
    image = np.random.default_rng(seq).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    h = FrameHeader(schema_version=1, camera="cam", seq=seq, capture_ns=1_700_000_000_000_000_000 + seq, publish_ns=0,
                    score=0.9, threshold=0.5, verdict="defect", model_id="m")
    archive.write(Entry(image, image[..., 0], h))
    seq += 1
    print(seq, flush=True)
"""


def test_a_kill_in_the_middle_of_writing_leaves_no_file_unaccounted(tmp_path):
    site = tmp_path / "site"
    mine = user_files(site)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = 0
    for delay_s in (0.05, 0.13, 0.29):  # SIGKILL at different points of a write
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(site), str(start)], stdout=subprocess.PIPE, env=env, text=True)
        for _ in range(5):  # a few whole entries first, so the quota is working when the kill comes
            assert proc.stdout.readline(), "the writer died"
        time.sleep(delay_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        start += 1000

        archive = Archive(ArchiveConfig(dir=str(site), quota_mb=0.02))  # the restart after the crash
        on_disk = {p.name for p in (site / "cam").iterdir()}
        assert not [n for n in on_disk if n.endswith(".tmp")], "a torn write was left behind"
        own = {f"{Path(e.rel).name}{s}" for e in archive.entries for s in e.suffixes}
        assert on_disk - own == {Path(n).name for n in mine if n.startswith("cam/")}, "a file is neither the user's nor in the index"
        assert archive.total_bytes == sum((site / "cam" / n).stat().st_size for n in own)
        assert unchanged(site, mine)
        archive.close()


def test_one_archive_folder_per_daemon_and_a_foreign_index_is_refused(tmp_path):
    site = tmp_path / "site"
    first = Archive(ArchiveConfig(dir=str(site), quota_mb=1))
    with pytest.raises(UserError, match="in use by another running daemon"):
        Archive(ArchiveConfig(dir=str(site), quota_mb=1))
    first.close()
    other = tmp_path / "other"
    other.mkdir()
    (other / INDEX_NAME).write_text("something else\n")
    with pytest.raises(UserError, match="is not an ssae archive index"):
        Archive(ArchiveConfig(dir=str(other), quota_mb=1))
    assert (other / INDEX_NAME).read_text() == "something else\n"
