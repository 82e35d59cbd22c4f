"""Overlays: the anomaly evidence of one frame drawn over the camera image, or over its model grid.

Shared by the daemon's archive (`.overlay.png`), `ssae edge tap --save` and the operator view, so a colour
means the same on disk, in a shell tool and on the page. numpy and OpenCV only: no web stack.

The evidence colour scale: an anomaly value is coloured by its ratio to the image threshold.
A heat map normalised to each frame's own maximum paints every frame's worst pixel red, even on a good part.
Here the colour depends only on value / threshold (the image score is the map's maximum, so a pixel at
ratio 1 alone makes the part a reject): a colour means the same evidence on every frame and camera, and
the view's legend is read off the same stops.

    ratio < 0.5      nothing drawn (ordinary texture)
    0.5 .. 1         blue -> cyan -> yellow, half transparent: evidence below the threshold
    1 (the jump)     orange-red: at the threshold the colour changes abruptly, so the line is visible
    1 .. 2 and over  red -> magenta, nearly opaque

The picture: the wire carries no camera image, so a live frame is drawn on a dark picture of the model's
input grid, scaled up by a whole factor; where the frame is at hand (the daemon's archive, or the archive's
`<camera>/<capture_ns>-<seq>.png` for the view), the evidence is drawn over it, inside the crop
(`mask.roi_*`) that the model saw. Evidence is, in order of preference, an anomaly map (coloured by the
scale), else the binary mask (in the threshold's colour); each region's box is outlined in the colour of its
peak score and labelled with it.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from edge.wire import FrameHeader

# (ratio, red, green, blue, alpha 0-255), ratios ascending; two stops at one ratio make a jump.
STOPS: tuple[tuple[float, int, int, int, int], ...] = (
    (0.0, 30, 90, 255, 0),
    (0.5, 30, 90, 255, 0),
    (0.75, 0, 200, 220, 90),
    (0.999, 255, 230, 0, 150),
    (1.0, 255, 70, 0, 190),
    (2.0, 255, 0, 200, 225),
)
MAX_RATIO = STOPS[-1][0]
MASK_RATIO = 1.0  # a binary mask pixel (above the pixel threshold) is drawn in the threshold's colour


def ratio_rgba(ratio: np.ndarray) -> np.ndarray:
    """uint8 RGBA (..., 4) for value/threshold ratios (any shape); NaN is transparent, beyond 2 saturates."""
    ratio = np.asarray(ratio, np.float32)
    r = np.clip(np.nan_to_num(ratio, nan=0.0, posinf=MAX_RATIO, neginf=0.0), 0.0, MAX_RATIO)
    xs = np.array([s[0] for s in STOPS], np.float32)
    out = np.empty(r.shape + (4,), np.uint8)
    for c in range(4):
        ys = np.array([s[c + 1] for s in STOPS], np.float32)
        out[..., c] = np.rint(np.interp(r, xs, ys)).astype(np.uint8)
    out[np.isnan(ratio)] = 0
    return out


def anchor(threshold: float) -> float | None:
    """The value colours are anchored to; None when there is no usable threshold (uncalibrated)."""
    return threshold if math.isfinite(threshold) and threshold > 0 else None


def evidence_rgba(amap: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 RGBA (H, W, 4) of an anomaly map (float, model units) on the threshold-anchored scale.

    Without a threshold (uncalibrated) there is no anchor: the map is drawn grey, brighter for higher
    values relative to this frame only, and the page says so.
    """
    amap = np.asarray(amap, np.float32)
    t = anchor(threshold)
    if t is not None:
        return ratio_rgba(amap / t)
    peak = float(np.nanmax(amap)) if amap.size else 0.0
    level = np.clip(np.nan_to_num(amap / peak) if peak > 0 else np.zeros_like(amap), 0, 1)
    grey = np.rint(level * 255).astype(np.uint8)
    return np.stack([grey, grey, grey, (grey * 0.8).astype(np.uint8)], axis=-1)


def dequantise(codes: np.ndarray, scale: float, offset: float = 0.0) -> np.ndarray:
    """float32 anomaly values of an 8-bit quantised map: value = offset + code x scale."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"map scale {scale!r} must be a positive number (anomaly units per code step)")
    return offset + np.asarray(codes, np.uint8).astype(np.float32) * np.float32(scale)


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
