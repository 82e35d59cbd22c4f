"""edge/files.py: one list of image formats for every reader, and written files readable as a plain open() makes them."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.files import IMAGE_SUFFIXES, list_images


@pytest.mark.parametrize("suffix", [".pgm", ".webp", ".tiff"])
def test_every_reader_takes_the_same_formats(tmp_path, suffix):
    from calibrate.score import list_images as calibrate_lists
    from edge.daemon.capture import FolderSource
    from train.data import load_images

    img = np.full((32, 32), 128, np.uint8)
    assert cv2.imwrite(str(tmp_path / f"part{suffix}"), img)
    (tmp_path / "notes.txt").write_text("not an image")
    want = [tmp_path / f"part{suffix}"]
    assert suffix in IMAGE_SUFFIXES
    assert list_images(tmp_path) == calibrate_lists(tmp_path, role="good") == want
    images, paths = load_images(tmp_path)  # what `ssae train fit` reads
    assert paths == want and images.shape[0] == 1
    assert FolderSource(tmp_path, on_skip=lambda path, why: None).files == want
    assert cv2.imread(str(want[0]), cv2.IMREAD_UNCHANGED) is not None  # OpenCV really decodes what the list admits


def test_written_files_are_readable_as_a_plain_open_would_make_them(tmp_path):
    """mkstemp makes 0600 files: a manifest the daemon's user cannot read. New files get 0666 less the umask,
    a replaced file keeps its mode."""
    import os
    import stat

    from edge.files import atomic_write_bytes, write_new_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "manifest.json", b"{}")
        write_new_bytes(tmp_path / "entry.png", b"png")
        assert stat.S_IMODE((tmp_path / "manifest.json").stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "entry.png").stat().st_mode) == 0o644
        os.chmod(tmp_path / "manifest.json", 0o640)
        atomic_write_bytes(tmp_path / "manifest.json", b"{ }")
        assert stat.S_IMODE((tmp_path / "manifest.json").stat().st_mode) == 0o640
    finally:
        os.umask(old)
