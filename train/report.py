"""What fooled the detector: per-image scores as CSV and a contact sheet of the worst cases.

The contact sheet shows the good test images with the highest scores (the false alarms first) above the
defective ones with the lowest scores (the misses first), each as the image and the image with its
anomaly map overlaid on one colour scale for the whole sheet (from the lowest to the highest map value
shown), the ground truth outlined in white.
numpy + OpenCV only, like the rest of evaluation; files are written atomically.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2
import numpy as np

from edge.files import atomic_write_bytes
from edge.manifest import InputSpec
from edge.preprocess import fit_frame
from train.testset import GOOD, EvalSplit, read_image

CSV_FIELDS = ("path", "defect", "is_defect", "score", "rank", "above_best_f1_threshold", "peak_x", "peak_y", "mask_px")
TILE_MIN_PX, TILE_MAX_PX = 128, 192
CAPTION_PX = 16


def write_scores_csv(path: Path, split: EvalSplit, scores: np.ndarray, maps: np.ndarray, masks: np.ndarray | None,
                     threshold: float) -> None:
    """One row per test image; rank 1 = the highest score. peak = where the map has its maximum (map pixels)."""
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(scores), int)
    rank[order] = np.arange(1, len(scores) + 1)
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(CSV_FIELDS)
    for i, sample in enumerate(split.samples):
        peak_y, peak_x = np.unravel_index(int(np.argmax(maps[i])), maps[i].shape)
        mask_px = int(masks[i].sum()) if masks is not None else ""
        out.writerow((str(sample.path), sample.defect, int(sample.defect != GOOD), f"{float(scores[i]):.6g}", int(rank[i]),
                      int(scores[i] > threshold), int(peak_x), int(peak_y), mask_px))
    atomic_write_bytes(path, buf.getvalue().encode())


def _colour(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 or frame.shape[2] == 1 else frame


def _tile(image: np.ndarray, side: int) -> np.ndarray:
    interp = cv2.INTER_NEAREST if side > image.shape[0] else cv2.INTER_AREA  # enlarged pixels stay visible as pixels
    return cv2.resize(image, (side, side * image.shape[0] // image.shape[1]), interpolation=interp)


def _caption(width: int, text: str) -> np.ndarray:
    strip = np.full((CAPTION_PX, width, 3), 32, np.uint8)
    cv2.putText(strip, text, (3, CAPTION_PX - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
    return strip


def _panel(frame: np.ndarray, amap: np.ndarray, mask: np.ndarray | None, lo: float, hi: float, side: int, text: str) -> np.ndarray:
    """The image above the image with its map (lo blue .. hi red): (2 * tile + caption, tile, 3) uint8."""
    image = _tile(_colour(frame), side)
    heat = cv2.applyColorMap(np.clip((amap - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    overlay = cv2.addWeighted(image, 0.5, _tile(heat, side), 0.5, 0)
    if mask is not None and mask.any():
        outline = _tile(mask.astype(np.uint8), side)
        contours, _ = cv2.findContours(outline, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(overlay, contours, -1, (255, 255, 255), 1)
    return np.vstack([_caption(image.shape[1], text), image, overlay])


def write_contact_sheet(path: Path, split: EvalSplit, spec: InputSpec, scores: np.ndarray, maps: np.ndarray,
                        masks: np.ndarray | None, per_row: int = 8) -> None:
    """PNG: the per_row highest-scoring good images, then the per_row lowest-scoring defective ones."""
    is_good = np.array([s.defect == GOOD for s in split.samples])
    good = np.flatnonzero(is_good)[np.argsort(-scores[is_good], kind="stable")][:per_row]
    bad = np.flatnonzero(~is_good)[np.argsort(scores[~is_good], kind="stable")][:per_row]
    shown = np.concatenate([good, bad])
    lo = float(maps[shown].min())
    hi = max(float(maps[shown].max()), lo + 1e-12)
    side = int(np.clip(spec.width_px, TILE_MIN_PX, TILE_MAX_PX))
    rows = []
    for title, picks in (("good test images, highest scores first (false alarms)", good),
                         ("defective test images, lowest scores first (misses)", bad)):
        panels = []
        for i in picks:
            sample = split.samples[i]
            image = read_image(sample.path)
            frame, _ = fit_frame(image[..., :3] if image.ndim == 3 and image.shape[2] == 4 else image, spec)  # BGRA: colour only
            label = sample.defect if sample.defect != GOOD else sample.path.stem
            panels.append(_panel(frame, maps[i], masks[i] if masks is not None else None, lo, hi, side, f"{label} {scores[i]:.4g}"))
        if not panels:
            continue
        while len(panels) < per_row:  # a short row keeps the grid
            panels.append(np.zeros_like(panels[0]))
        row = np.hstack(panels)
        rows += [_caption(row.shape[1], title), row]
    sheet = np.vstack(rows)
    legend = f"map overlay: {lo:.4g} (blue) .. {hi:.4g} (red), one scale for the sheet; white outline: ground truth"
    sheet = np.vstack([_caption(sheet.shape[1], legend), sheet])
    ok, png = cv2.imencode(".png", sheet)
    if not ok:
        raise OSError(f"OpenCV could not encode the contact sheet for {path}")
    atomic_write_bytes(path, png.tobytes())
