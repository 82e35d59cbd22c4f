"""Corruptions that look like the part: near-distribution fills and gradient-domain (Poisson) blending.

The fills of train/corrupt.py are mostly foreign (noise, flat colour, another image at another scale and
tone). A head trained only on those learns "foreign material". These two make corruptions that are made
of the part's own kind of content, so the head must learn "different from here":

- near_fill: another good image's content under a rotation by any angle and a visible change of scale
  (never close to 1, so the change is real at every grain size), in its own tone;
- poisson_blend: any fill pasted in the gradient domain (cv2.seamlessClone), so its edge matches the
  surroundings and no seam gives it away.

Nothing here knows any benchmark's defect types. float32 (H, W, C) images in [0, 1], one Generator per call.
"""

from __future__ import annotations

import cv2
import numpy as np

SCALE_MIN_LOG2, SCALE_MAX_LOG2 = 0.32, 1.0  # |log2 scale| in [0.32, 1]: x0.5..0.8 or x1.25..2


def near_fill(img: np.ndarray, pool: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """A pool image (img itself without a pool), rotated, rescaled and shifted: float32 (H, W, C)."""
    h, w, c = img.shape
    src = pool[rng.integers(len(pool))].astype(np.float32) / 255.0 if pool is not None and len(pool) else img
    scale = 2.0 ** (rng.choice((-1.0, 1.0)) * rng.uniform(SCALE_MIN_LOG2, SCALE_MAX_LOG2))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-180, 180), scale)
    m[:, 2] += rng.uniform(-0.5, 0.5, 2) * (w, h)
    out = cv2.warpAffine(np.ascontiguousarray(src), m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out.reshape(h, w, c).astype(np.float32)


def poisson_blend(fill: np.ndarray, dst: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The fill cloned into dst inside region (> 0) in the gradient domain: float32 (H, W, C) in [0, 1].

    Outside the region the result equals dst. A region under 3 px across (OpenCV refuses it) keeps the
    fill as it is, to be alpha-blended. Normal cloning keeps the fill's gradients; mixed cloning
    (half of the time) keeps the stronger of the two, so dst's structure shows through. Images are padded
    first: OpenCV leaves a mask's outermost pixel row/column uncloned and refuses a region at the border.
    """
    h, w, c = dst.shape
    pad = 2
    to8 = lambda a: np.clip(np.round(a * 255), 0, 255).astype(np.uint8)  # noqa: E731

    def prep(a: np.ndarray) -> np.ndarray:
        a = cv2.copyMakeBorder(to8(a), pad, pad, pad, pad, cv2.BORDER_REFLECT).reshape(h + 2 * pad, w + 2 * pad, c)
        return np.repeat(a, 3, axis=2) if c == 1 else a  # seamlessClone takes 3 channels

    mask = np.pad((region > 0).astype(np.uint8) * 255, pad)
    x, y, bw, bh = cv2.boundingRect(mask)
    if bw < 3 or bh < 3:
        return fill
    centre = (x + bw // 2, y + bh // 2)  # where OpenCV puts the region back: its own place
    mode = cv2.MIXED_CLONE if rng.random() < 0.5 else cv2.NORMAL_CLONE
    out = cv2.seamlessClone(prep(fill), prep(dst), mask, centre, mode)[pad : pad + h, pad : pad + w]
    out = out.astype(np.float32) / 255.0
    if c == 1:
        out = out.mean(axis=2, keepdims=True)
    # Outside the region: dst exactly (the uint8 round trip must not touch untouched pixels).
    inside = (region > 0)[..., None]
    return np.where(inside, out, dst).astype(np.float32)
