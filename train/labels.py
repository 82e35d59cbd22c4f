"""What the head is trained to find: the corruption's mask, softened where the change cannot be seen.

A region drawn by the corruption does not always change the image: a faint fill on a surface of the same
tone, a gradient-domain (Poisson) blend of a thin stroke, a patch that happens to match. Teaching the head
"defect" there teaches it to guess. So the label is the region mask scaled by how much the corruption
moved the pixel (slightly smoothed, so a speckled match inside a changed region stays labelled), reaching
full strength at a change of `tau` in [0, 1] units.
"""

from __future__ import annotations

import cv2
import numpy as np


def visible_change(clean: np.ndarray, corrupted: np.ndarray, alpha: np.ndarray, tau: float) -> np.ndarray:
    """clean, corrupted float32 (H, W, C) in [0, 1]; alpha (H, W) -> label float32 (H, W) in [0, 1].

    tau = 0: the binary region mask (alpha > 0).
    """
    region = (alpha > 0).astype(np.float32)
    if tau <= 0 or not region.any():
        return region
    change = np.abs(corrupted - clean).max(axis=2)  # (H, W): the largest channel change
    change = cv2.GaussianBlur(change, (0, 0), 1.0)
    return region * np.clip(change / tau, 0.0, 1.0)
