"""The overlay picture: the anomaly evidence of one frame drawn over the camera image, or over its model grid.

The wire carries no camera image, so a live frame is drawn on a dark picture of the model's input grid,
scaled up by a whole factor; where the archive holds the frame (`<camera>/<capture_ns>-<seq>.png`), the
evidence is drawn over it, inside the crop (`mask.roi_*`) that the model saw. Evidence is, in order of
preference, an anomaly map (coloured by `scale`), else the binary mask (in the threshold's colour); each
region's box is outlined in the colour of its peak score and labelled with it.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from edge.client.view.scale import MASK_RATIO, anchor, evidence_rgba, ratio_rgba
from edge.wire import FrameHeader

GRID_BACKGROUND = 28  # grey level of the model grid when there is no camera image
MIN_SIDE_PX = 256  # a 64x64 grid is scaled up to at least this, so a region is visible
MAX_SIDE_PX = 720  # camera frames are scaled down to at most this for the browser


def _grid_size(header: FrameHeader, mask: np.ndarray | None, amap: np.ndarray | None) -> tuple[int, int]:
    for a in (amap, mask):
        if a is not None:
            return a.shape[:2]
    if header.mask.height_px and header.mask.width_px:
        return header.mask.height_px, header.mask.width_px
    h = max([r.y + r.h for r in header.regions] + [1])
    w = max([r.x + r.w for r in header.regions] + [1])
    return h, w


def _as_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image.copy()


def _roi(header: FrameHeader, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """The crop the model saw, in camera pixels, clipped to the image; the whole image when unknown."""
    m, (ih, iw) = header.mask, image_hw
    if m.roi_w <= 0 or m.roi_h <= 0:
        return 0, 0, iw, ih
    x, y = min(max(0, m.roi_x), iw - 1), min(max(0, m.roi_y), ih - 1)
    return x, y, max(1, min(m.roi_w, iw - x)), max(1, min(m.roi_h, ih - y))


def _blend(canvas: np.ndarray, rgba: np.ndarray, x: int, y: int) -> None:
    """Alpha-blend an RGBA layer into the BGR canvas at (x, y), in place."""
    h, w = rgba.shape[:2]
    window = canvas[y : y + h, x : x + w].astype(np.float32)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    colour = rgba[..., 2::-1].astype(np.float32)  # RGB -> BGR
    canvas[y : y + h, x : x + w] = np.rint(window * (1 - alpha) + colour * alpha).astype(np.uint8)


def render_overlay(
    header: FrameHeader,
    *,
    mask: np.ndarray | None = None,
    amap: np.ndarray | None = None,
    image: np.ndarray | None = None,
) -> np.ndarray:
    """BGR uint8 picture of one frame's evidence; see the module docstring for what is drawn where."""
    gh, gw = _grid_size(header, mask, amap)
    if image is not None:
        canvas = _as_bgr(image)
        x, y, rw, rh = _roi(header, canvas.shape[:2])
        s = min(1.0, MAX_SIDE_PX / max(canvas.shape[:2]))
        if s < 1.0:
            canvas = cv2.resize(canvas, (max(1, round(canvas.shape[1] * s)), max(1, round(canvas.shape[0] * s))), interpolation=cv2.INTER_AREA)
            x, y = min(int(x * s), canvas.shape[1] - 1), min(int(y * s), canvas.shape[0] - 1)
            rw, rh = max(1, min(round(rw * s), canvas.shape[1] - x)), max(1, min(round(rh * s), canvas.shape[0] - y))
    else:
        k = max(1, -(-MIN_SIDE_PX // max(gh, gw)))
        canvas = np.full((gh * k, gw * k, 3), GRID_BACKGROUND, np.uint8)
        x, y, rw, rh = 0, 0, gw * k, gh * k
    if amap is not None:
        values = cv2.resize(np.asarray(amap, np.float32), (rw, rh), interpolation=cv2.INTER_LINEAR)
        _blend(canvas, evidence_rgba(values, header.threshold), x, y)
    elif mask is not None:
        on = cv2.resize(np.asarray(mask, np.uint8), (rw, rh), interpolation=cv2.INTER_NEAREST) > 0
        layer = np.zeros((rh, rw, 4), np.uint8)
        layer[on] = ratio_rgba(np.float32(MASK_RATIO))
        _blend(canvas, layer, x, y)
    _draw_regions(canvas, header, (x, y, rw / gw, rh / gh))
    return canvas


def _draw_regions(canvas: np.ndarray, header: FrameHeader, place: tuple[int, int, float, float]) -> None:
    x0, y0, sx, sy = place
    t = anchor(header.threshold)
    for r in header.regions:
        ratio = r.peak_score / t if t is not None else MASK_RATIO
        red, green, blue, _ = (int(c) for c in ratio_rgba(np.float32(ratio if math.isfinite(ratio) else 0.0)))
        colour = (blue, green, red) if ratio >= 0.5 else (255, 255, 255)
        p1 = (x0 + int(r.x * sx), y0 + int(r.y * sy))
        p2 = (x0 + max(int((r.x + r.w) * sx) - 1, int(r.x * sx)), y0 + max(int((r.y + r.h) * sy) - 1, int(r.y * sy)))
        cv2.rectangle(canvas, p1, p2, colour, 2 if max(canvas.shape[:2]) >= 400 else 1)
        cv2.putText(canvas, f"{r.peak_score:.3g}", (p1[0], max(12, p1[1] - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)


def encode_png(image: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("OpenCV could not encode the overlay as PNG")
    return png.tobytes()
