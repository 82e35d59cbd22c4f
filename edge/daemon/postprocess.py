"""From anomaly map and score to what the line acts on: verdict, defect mask and defect regions.

    verdict  "defect" when score > image threshold; "review" when an uncertain band is in force and
             score > its lower threshold; else "ok"; "unknown" when there is no threshold
    mask     anomaly_map > pixel threshold, uint8 0/255 on the model's input grid
    regions  8-connected parts of the mask of at least min_region_px, largest first, with their box,
             area and peak map value (so a PLC can sort by size or severity without the mask); a
             "defect" always lists at least the part holding the peak, however small
    map      the anomaly map quantised to 8 bits for the wire and the archive (`quantise_map`)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import msgspec
import numpy as np

from edge.manifest import Calibration
from edge.wire import Region, Verdict


class Thresholds(msgspec.Struct, frozen=True, kw_only=True):
    """The thresholds in force and where they came from (for logs, health and the control reply)."""

    image: float | None  # None: uncalibrated, frames are judged "unknown" (their score is still published)
    pixel: float | None
    origin: str  # "bundle calibration", "config", "control", "uncalibrated"
    review: float | None = None  # lower edge of the uncertain band (below `image`); None = no band


def resolve_thresholds(
    calibration: Calibration | None, image: float | None = None, pixel: float | None = None, origin: str = "config", review: float | None = None
) -> Thresholds:
    """Configured values win over the bundle's calibration; a missing pixel threshold follows the image one.

    The image score is the map's maximum, so pixels above the image threshold are exactly the places that
    make a frame a defect: the natural mask when no pixel threshold was calibrated. The uncertain band
    belongs to the image threshold it was fitted under: the calibration's band holds with the calibration's
    threshold only; a threshold set elsewhere (config, control) has the band given with it, if any.
    """
    if image is not None:
        if pixel is None:
            pixel = calibration.pixel_threshold if calibration is not None else image
        return Thresholds(image=image, pixel=pixel, origin=origin, review=review if review is not None and review < image else None)
    if calibration is not None:
        return Thresholds(
            image=calibration.image_threshold,
            pixel=pixel if pixel is not None else calibration.pixel_threshold,
            origin="bundle calibration" if pixel is None else f"bundle calibration, pixel from {origin}",
            review=calibration.review_threshold,
        )
    return Thresholds(image=None, pixel=pixel, origin="uncalibrated")


class Judgement(NamedTuple):
    verdict: Verdict
    regions: list[Region]
    mask: np.ndarray | None  # uint8 (H, W) 0/255, None when there is no pixel threshold
    reason: str


def judge(amap: np.ndarray, score: float, thresholds: Thresholds, *, min_region_px: int = 4, max_regions: int = 16) -> Judgement:
    """amap float32 (H, W), score float -> verdict, regions and mask."""
    if not math.isfinite(score):
        return Judgement("unknown", [], None, f"model returned a non-finite score ({score})")
    defect = thresholds.image is not None and score > thresholds.image
    review = not defect and thresholds.review is not None and score > thresholds.review
    mask, regions = None, []
    if thresholds.pixel is not None:
        mask, regions = find_regions(amap, thresholds.pixel, min_region_px=min_region_px, max_regions=max_regions, keep_peak=defect or review)
    if thresholds.image is None:
        return Judgement("unknown", regions, mask, "uncalibrated: the bundle has no calibration and no threshold is configured; run `ssae calibrate fit` or set image_threshold")
    return Judgement("defect" if defect else "review" if review else "ok", regions, mask, "")


def find_regions(
    amap: np.ndarray, pixel_threshold: float, *, min_region_px: int = 4, max_regions: int = 16, keep_peak: bool = False
) -> tuple[np.ndarray, list[Region]]:
    """Threshold the map and describe its connected parts, largest first.

    keep_peak: when no part reaches min_region_px, still report the one holding the map's maximum, so that a
    "defect" verdict always comes with the place that caused it.
    """
    mask = (amap > pixel_threshold).astype(np.uint8)  # (H, W) 0/1
    if max_regions == 0 or not mask.any():
        return mask * 255, []
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    areas = stats[1:, cv2.CC_STAT_AREA]  # label 0 is the background
    order = np.argsort(-areas, kind="stable")
    chosen = [k + 1 for k in order[:max_regions] if areas[k] >= min_region_px]  # labels, largest first
    if not chosen and keep_peak:
        peak_label = int(labels.flat[int(np.argmax(amap))])
        chosen = [peak_label] if peak_label else []
    regions = []
    for label in chosen:
        x, y, w, h, area = (int(v) for v in stats[label, :5])
        window = labels[y : y + h, x : x + w] == label
        peak = float(amap[y : y + h, x : x + w][window].max())
        regions.append(Region(x=x, y=y, w=w, h=h, area_px=area, peak_score=peak))
    return mask * 255, regions


def encode_mask(mask: np.ndarray | None, encoding: str) -> bytes:
    """The mask frame of the wire: raw uint8 row-major 0/255, a PNG, or nothing."""
    if mask is None or encoding == "none":
        return b""
    if encoding == "raw":
        return np.ascontiguousarray(mask, dtype=np.uint8).tobytes()
    if encoding == "png":
        ok, png = cv2.imencode(".png", mask)
        if not ok:
            raise RuntimeError("OpenCV could not encode the mask as PNG")
        return png.tobytes()
    raise ValueError(f"mask encoding {encoding!r} is unknown; use none, raw or png")


class QuantisedMap(NamedTuple):
    codes: np.ndarray  # uint8 (H, W)
    scale: float  # anomaly units per code step (> 0)
    offset: float  # the value of code 0


def quantise_map(amap: np.ndarray) -> QuantisedMap:
    """The map in 8 bits over its own range: value = offset + code x scale, within scale / 2 of the original.

    Per frame from its minimum to its maximum, so a quiet map keeps its detail and a loud one its peak; the
    colour scale of an overlay comes from the threshold, not from these codes, so frames stay comparable.
    """
    values = np.nan_to_num(np.asarray(amap, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0  # a flat map: every code 0, any positive scale
    codes = np.clip(np.rint((values - lo) / scale), 0, 255).astype(np.uint8)
    return QuantisedMap(codes, scale, lo)
