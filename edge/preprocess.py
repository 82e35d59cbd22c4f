"""Fit a camera frame to the model's input: optional crop, resize, channel check.

Shared by the daemon and calibration so that thresholds are fitted on exactly what the line sees.
"""

from __future__ import annotations

import cv2
import msgspec
import numpy as np

from edge.manifest import InputSpec


class FrameError(ValueError):
    """A frame cannot be judged (wrong channels, crop outside the frame, empty); the verdict is "unknown"."""


class Roi(msgspec.Struct, frozen=True):
    x: int
    y: int
    w: int
    h: int


def fit_frame(frame: np.ndarray, spec: InputSpec, crop: Roi | None = None, resize: bool = True) -> tuple[np.ndarray, Roi]:
    """frame uint8 (H, W[, C]) -> (uint8 (spec.height_px, spec.width_px, spec.channels), the roi used).

    With resize=False a frame whose size differs from the model input is refused rather than resized
    (for lines where resizing would hide small defects).
    """
    if frame is None or frame.size == 0:
        raise FrameError("empty frame")
    if frame.dtype != np.uint8:
        raise FrameError(f"frame dtype {frame.dtype}, expected uint8")
    channels = 1 if frame.ndim == 2 else frame.shape[2]
    if channels != spec.channels:
        if spec.channels == 3 and channels == 1:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        elif spec.channels == 1 and channels == 3:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        else:
            raise FrameError(f"frame has {channels} channels, model expects {spec.channels}")
    h, w = frame.shape[:2]
    roi = crop or Roi(0, 0, w, h)
    if roi.x < 0 or roi.y < 0 or roi.x + roi.w > w or roi.y + roi.h > h:
        raise FrameError(f"crop {roi.x},{roi.y},{roi.w}x{roi.h} lies outside the {w}x{h} frame")
    frame = frame[roi.y : roi.y + roi.h, roi.x : roi.x + roi.w]
    if (roi.h, roi.w) != (spec.height_px, spec.width_px):
        if not resize:
            raise FrameError(f"frame is {roi.w}x{roi.h}, model expects {spec.width_px}x{spec.height_px} and resize is off")
        frame = cv2.resize(frame, (spec.width_px, spec.height_px), interpolation=cv2.INTER_AREA)
    if frame.ndim == 2:
        frame = frame[..., None]
    return np.ascontiguousarray(frame), roi
