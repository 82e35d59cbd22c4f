"""The corruption model: structured synthetic defects that the network learns to remove.

corrupt(x) draws 0..max_regions regions of random shape (star polygons, smooth blobs, thin strokes),
fills each with foreign texture (another training image or procedural noise), a deformed or shifted
patch of the same image, or a flat colour, and blends it in with random opacity and a soft edge.
Nothing here knows the defect types of any benchmark: the point is that "anything that is not normal"
gets projected back onto normal, so the shapes and fills are deliberately generic.

Images are float32 (H, W, C) in [0, 1]; numpy + OpenCV on the CPU, one Generator per call.
"""

from __future__ import annotations

from typing import Annotated

import cv2
import msgspec
import numpy as np
from msgspec import Meta

from train.fills import near_fill, poisson_blend

Prob = Annotated[float, Meta(ge=0.0, le=1.0)]


class CorruptionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    p_clean: Prob = 0.1  # some inputs stay clean, so the filter also learns to leave normal images alone
    max_regions: Annotated[int, Meta(ge=1, le=16)] = 4  # regions per corrupted image: 1..max
    size_min: Annotated[float, Meta(gt=0, le=1)] = 0.04  # region extent as a fraction of the image side
    size_max: Annotated[float, Meta(gt=0, le=1)] = 0.4
    opacity_min: Prob = 0.15  # faint defects too: stains and partial occlusion are rarely opaque
    opacity_max: Prob = 1.0
    feather_max_px: Annotated[float, Meta(ge=0)] = 2.0  # soft edges up to this blur sigma
    # Relative weights of the shape families and fills (need not sum to 1).
    shape_polygon: Annotated[float, Meta(ge=0)] = 1.0
    shape_blob: Annotated[float, Meta(ge=0)] = 1.0
    shape_stroke: Annotated[float, Meta(ge=0)] = 0.6
    fill_texture: Annotated[float, Meta(ge=0)] = 1.0  # crop of another training image
    fill_noise: Annotated[float, Meta(ge=0)] = 0.6  # procedural coloured noise
    fill_patch: Annotated[float, Meta(ge=0)] = 1.0  # shifted / rotated / scaled patch of the same image
    fill_flat: Annotated[float, Meta(ge=0)] = 0.5  # flat colour
    # Near-distribution corruption (train/fills.py). Off here, i.e. in the seed paper's corruption; the default
    # recipe turns both on (train/config.py), so that its head learns "different from here".
    fill_near: Annotated[float, Meta(ge=0)] = 0.0  # another good image, rotated and visibly rescaled
    poisson: Prob = 0.0  # share of fills blended in the gradient domain (no seam to give them away)
    # Share of fills on colour images recoloured into the image's own hue (only brightness differs), so
    # that colour alone is never the tell. Gray images (equal channels) always get gray fills: a coloured
    # fill on a gray part teaches "remove colour", which no real defect on that part will show.
    own_colour: Prob = 0.5

    def __post_init__(self):
        if self.size_min > self.size_max:
            raise msgspec.ValidationError(f"size_min {self.size_min} > size_max {self.size_max}; make size_min the smaller")
        if self.opacity_min > self.opacity_max:
            raise msgspec.ValidationError(f"opacity_min {self.opacity_min} > opacity_max {self.opacity_max}; make opacity_min the smaller")
        if self.shape_polygon + self.shape_blob + self.shape_stroke <= 0:
            raise msgspec.ValidationError("all shape_* weights are 0; give at least one a positive weight")
        if self.fill_texture + self.fill_noise + self.fill_patch + self.fill_flat + self.fill_near <= 0:
            raise msgspec.ValidationError("all fill_* weights are 0; give at least one a positive weight")


def _pick(rng: np.random.Generator, names: tuple[str, ...], weights: tuple[float, ...]) -> str:
    w = np.asarray(weights, dtype=np.float64)
    return names[rng.choice(len(names), p=w / w.sum())]


def shape_mask(h: int, w: int, cfg: CorruptionConfig, rng: np.random.Generator) -> np.ndarray:
    """A random region: float32 (h, w) in {0, 1}."""
    kind = _pick(rng, ("polygon", "blob", "stroke"), (cfg.shape_polygon, cfg.shape_blob, cfg.shape_stroke))
    side = min(h, w)
    extent = rng.uniform(cfg.size_min, cfg.size_max) * side
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    mask = np.zeros((h, w), np.uint8)
    if kind == "polygon":
        n = int(rng.integers(3, 11))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = extent / 2 * rng.uniform(0.3, 1.0, n)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
    elif kind == "blob":
        grid = int(rng.integers(2, 6))
        field = cv2.resize(rng.normal(0, 1, (grid + 1, grid + 1)).astype(np.float32), (max(2, int(extent)),) * 2, interpolation=cv2.INTER_CUBIC)
        yy, xx = np.mgrid[-1 : 1 : field.shape[0] * 1j, -1 : 1 : field.shape[1] * 1j]
        blob = (field + 1.5 * (1 - (xx**2 + yy**2)) > 1.0).astype(np.uint8)  # smooth edge inside a soft disc
        x0, y0 = int(cx - blob.shape[1] / 2), int(cy - blob.shape[0] / 2)
        xs, ys = slice(max(0, x0), min(w, x0 + blob.shape[1])), slice(max(0, y0), min(h, y0 + blob.shape[0]))
        mask[ys, xs] = blob[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    else:  # a thin curved stroke: scratch-, crack- or hair-like
        n = int(rng.integers(2, 6))
        steps = rng.normal(0, extent / n, (n, 2))
        pts = np.cumsum(np.vstack([[cx, cy], steps]), axis=0)
        thick = int(rng.integers(1, max(2, side // 40) + 1))
        cv2.polylines(mask, [np.round(pts).astype(np.int32)], False, 1, thickness=thick, lineType=cv2.LINE_8)
    if not mask.any():  # a region that fell outside the frame: place a small square instead
        s = max(1, int(extent / 2))
        x0, y0 = int(min(cx, w - s)), int(min(cy, h - s))
        mask[y0 : y0 + s, x0 : x0 + s] = 1
    return mask.astype(np.float32)


def fill_for(img: np.ndarray, pool: np.ndarray | None, cfg: CorruptionConfig, rng: np.random.Generator) -> np.ndarray:
    """What the region is replaced by: float32 (H, W, C) in [0, 1]."""
    h, w, c = img.shape
    # "near" last: with its weight 0 the draw (one uniform against the cumulative weights) is the same as without it.
    weights = (cfg.fill_texture if pool is not None and len(pool) else 0.0, cfg.fill_noise, cfg.fill_patch, cfg.fill_flat, cfg.fill_near)
    if sum(weights) == 0:  # only texture was allowed and there is no pool
        weights = (0.0, 1.0, 0.0, 0.0, 0.0)
    kind = _pick(rng, ("texture", "noise", "patch", "flat", "near"), weights)
    if kind == "near":
        return near_fill(img, pool, rng)
    if kind == "texture":
        other = pool[rng.integers(len(pool))].astype(np.float32) / 255.0
        other = np.rot90(other, int(rng.integers(4)))
        if rng.random() < 0.5:
            other = other[:, ::-1]
        scale = rng.uniform(0.5, 2.0)  # foreign texture at a foreign scale
        other = cv2.resize(np.ascontiguousarray(other), None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        other = other.reshape(other.shape[0], other.shape[1], c)
        reps = (int(np.ceil(h / other.shape[0])) + 1, int(np.ceil(w / other.shape[1])) + 1, 1)
        tiled = np.tile(other, reps)
        y0, x0 = rng.integers(0, tiled.shape[0] - h + 1), rng.integers(0, tiled.shape[1] - w + 1)
        out = tiled[y0 : y0 + h, x0 : x0 + w]
        if rng.random() < 0.5:  # shift its colour so it is foreign in tone as well as structure
            out = out * rng.uniform(0.6, 1.4, c) + rng.uniform(-0.2, 0.2, c)
        return out.astype(np.float32)
    if kind == "noise":
        grid = int(rng.integers(2, max(3, min(h, w) // 2)))
        field = rng.normal(0, 1, (grid, grid, c)).astype(np.float32)
        field = cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, c)
        return (rng.uniform(0, 1, c) + rng.uniform(0.05, 0.4) * field).astype(np.float32)
    if kind == "patch":  # the image's own material, displaced: a deformed or misplaced patch
        angle, scale = rng.uniform(-45, 45), rng.uniform(0.6, 1.6)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        m[:, 2] += rng.uniform(-0.5, 0.5, 2) * (w, h)
        out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return out.reshape(h, w, c).astype(np.float32)
    base = rng.uniform(0, 1, c) if rng.random() < 0.5 else img.mean(axis=(0, 1)) + rng.uniform(-0.3, 0.3, c)
    return np.broadcast_to(base.astype(np.float32), img.shape).copy()


def is_gray(img: np.ndarray) -> bool:
    """True for a single-channel image or one whose channels are all equal (a gray camera as RGB)."""
    return img.shape[2] == 1 or bool(np.all(img == img[..., :1]))


def in_own_colour(fill: np.ndarray, img: np.ndarray) -> np.ndarray:
    """The fill's brightness in the image's mean hue: gray for a gray image."""
    hue = img.mean(axis=(0, 1)) / max(float(img.mean()), 1e-6)
    return fill.mean(axis=2, keepdims=True) * hue.astype(np.float32)


def corrupt(img: np.ndarray, pool: np.ndarray | None, cfg: CorruptionConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """img float32 (H, W, C) in [0, 1] -> (corrupted image, alpha float32 (H, W) in [0, 1]).

    alpha is the blend weight of the foreign content at each pixel: 0 exactly where the image is
    untouched, so (alpha > 0) is the mask of what may have changed. pool: uint8 (N, H', W', C) images
    to take foreign texture from (may be None).
    """
    h, w, _ = img.shape
    alpha = np.zeros((h, w), np.float32)
    if not cfg.enabled or rng.random() < cfg.p_clean:
        return img.copy(), alpha
    out = img.copy()
    gray = is_gray(img)
    for _ in range(int(rng.integers(1, cfg.max_regions + 1))):
        region = shape_mask(h, w, cfg, rng)
        if cfg.feather_max_px > 0 and rng.random() < 0.5:
            sigma = rng.uniform(0.3, cfg.feather_max_px)
            # Feather inside the region only, so alpha stays 0 outside it and <= opacity inside.
            region = region * np.clip(cv2.GaussianBlur(region, (0, 0), sigma) * 2.0, 0, 1)
        a = region * rng.uniform(cfg.opacity_min, cfg.opacity_max)
        fill = fill_for(img, pool, cfg, rng)
        if gray or rng.random() < cfg.own_colour:
            fill = in_own_colour(fill, img)
        if cfg.poisson and rng.random() < cfg.poisson:  # no draw at 0: the residual recipe's stream is unchanged
            fill = poisson_blend(np.clip(fill, 0, 1), out, region, rng)
        out = out * (1 - a[..., None]) + np.clip(fill, 0, 1) * a[..., None]
        alpha = np.maximum(alpha, a)
    return out.astype(np.float32), alpha
