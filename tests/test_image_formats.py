"""One list of image formats: a folder the daemon reads is a folder training, calibration and the tools read."""

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
