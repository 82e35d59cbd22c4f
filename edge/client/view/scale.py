"""The evidence colour scale: an anomaly value is coloured by its ratio to the image threshold.

A heat map normalised to each frame's own maximum paints every frame's worst pixel red, even on a good part.
Here the colour depends only on value / threshold (the image score is the map's maximum, so a pixel at
ratio 1 alone makes the part a reject): a colour means the same evidence on every frame and camera, and
the legend on the page is read off the same stops.

    ratio < 0.5      nothing drawn (ordinary texture)
    0.5 .. 1         blue -> cyan -> yellow, half transparent: evidence below the threshold
    1 (the jump)     orange-red: at the threshold the colour changes abruptly, so the line is visible
    1 .. 2 and over  red -> magenta, nearly opaque

The wire carries a binary mask (pixels above the pixel threshold) or, by the daemon's config, an 8-bit
quantised anomaly map (its scale in the header, see `wire_map`), dequantised and coloured by these stops.
The daemon's archive and `ssae edge tap --save` draw their overlays with the same stops (render.py).
"""

from __future__ import annotations

import math

import numpy as np

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


def wire_map(info, data: bytes | None) -> np.ndarray | None:
    """The anomaly map a frame's mask part carries, as float32 (H, W); None when it is a binary mask or empty.

    The wire's quantised map (schema 2): `MaskInfo.kind == "map"`, `MaskInfo.map_scale` (anomaly units per
    code step) and `MaskInfo.map_offset`; the bytes are laid out as `encoding` says (raw or png, 8-bit,
    height x width). A schema-1 MaskInfo has none of these, so its frames take the binary-mask path.
    """
    if getattr(info, "kind", "mask") != "map" or not data:
        return None
    shape = (info.height_px, info.width_px)
    if info.encoding == "raw":
        if len(data) != shape[0] * shape[1]:
            raise ValueError(f"raw map has {len(data)} bytes; header says {shape[1]}x{shape[0]}")
        codes = np.frombuffer(data, np.uint8).reshape(shape)
    elif info.encoding == "png":
        import cv2

        codes = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if codes is None or codes.shape != shape:
            raise ValueError(f"png map does not decode to the header's {shape[1]}x{shape[0]}")
    else:
        raise ValueError(f"map encoding {info.encoding!r} is unknown to the view; upgrade it")
    return dequantise(codes, float(getattr(info, "map_scale", 0.0)), float(getattr(info, "map_offset", 0.0)))


def legend() -> list[dict]:
    """The stops for the page's legend (the same numbers the server colours with)."""
    return [{"ratio": s[0], "rgba": [s[1], s[2], s[3], round(s[4] / 255, 3)]} for s in STOPS]
