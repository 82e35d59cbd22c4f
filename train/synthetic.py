"""The project's own synthetic parts: good and defective images with masks, made offline in seconds.

Used by the demo (`ssae edge demo`) and the tests, so a clone of the project alone can train, run and be
tested without any dataset download. Numpy and OpenCV only (no torch): the edge demo imports it too.

A "part" is a brushed-metal plate with a machined ring and bolt holes, lit with a soft gradient, in a
random but small pose jitter. Defects are drawn on top with their exact masks.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

DEFECT_KINDS = ("scratch", "dent", "spot")


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    """One independent generator per image: same arguments, same pixels, whatever the order of calls."""
    words = [seed] + [int.from_bytes(str(k).encode()[:8].ljust(8, b"\0"), "little") for k in keys]
    return np.random.default_rng(np.random.SeedSequence(words))


def make_part(size: int, rng: np.random.Generator) -> np.ndarray:
    """A good part: uint8 (size, size, 3) BGR."""
    s = size
    noise = rng.normal(0, 1, (s, s)).astype(np.float32)
    k = max(3, s // 8) | 1
    brushed = cv2.GaussianBlur(noise, (k, 1), 0) * 12  # streaks along x, like brushed metal
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    angle = rng.uniform(0, 2 * np.pi)
    light = 150 + 30 * (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5))
    gray = light + brushed
    cx, cy = s / 2 + rng.uniform(-0.02, 0.02) * s, s / 2 + rng.uniform(-0.02, 0.02) * s
    r = np.hypot(xx * s - cx, yy * s - cy)
    ring = (r > 0.26 * s) & (r < 0.34 * s)
    gray = np.where(ring, gray - 35, gray)  # machined groove
    gray = np.where(r < 0.12 * s, gray + 25, gray)  # polished hub
    img = np.clip(gray, 0, 255).astype(np.uint8)
    out = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    for i in range(4):  # bolt holes at fixed angles, tiny pose jitter
        a = i * np.pi / 2 + np.pi / 4 + rng.uniform(-0.03, 0.03)
        hx, hy = int(cx + 0.42 * s * np.cos(a)), int(cy + 0.42 * s * np.sin(a))
        cv2.circle(out, (hx, hy), max(1, int(0.035 * s)), (40, 40, 45), -1, lineType=cv2.LINE_AA)
    tint = np.array([1.0, 1.0 + rng.uniform(-0.02, 0.02), 1.0 + rng.uniform(-0.02, 0.02)], np.float32)
    return np.clip(out.astype(np.float32) * tint, 0, 255).astype(np.uint8)


def add_defect(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect; returns (defective image, mask uint8 0/255 of the pixels it changed)."""
    s = img.shape[0]
    layer = np.zeros(img.shape[:2], np.uint8)
    colour = img.copy()
    if kind == "scratch":
        p0 = rng.uniform(0.15, 0.85, 2) * s
        p1 = p0 + rng.uniform(-0.35, 0.35, 2) * s
        thick = max(1, int(round(s / 96)))
        cv2.line(layer, tuple(int(v) for v in p0), tuple(int(v) for v in np.clip(p1, 0, s - 1)), 255, thick)
        colour[:] = (230, 230, 235)
    elif kind == "dent":
        c = tuple(int(v) for v in rng.uniform(0.2, 0.8, 2) * s)
        axes = tuple(max(2, int(v)) for v in rng.uniform(0.03, 0.07, 2) * s)
        cv2.ellipse(layer, c, axes, rng.uniform(0, 180), 0, 360, 255, -1)
        colour = (img.astype(np.int16) - 60).clip(0, 255).astype(np.uint8)
    elif kind == "spot":
        c = tuple(int(v) for v in rng.uniform(0.2, 0.8, 2) * s)
        cv2.circle(layer, c, max(2, int(rng.uniform(0.03, 0.06) * s)), 255, -1)
        colour[:] = (30, 70, 110)  # rust-brown in BGR
    else:
        raise ValueError(f"defect kind {kind!r} is unknown; use one of {', '.join(DEFECT_KINDS)}")
    alpha = cv2.GaussianBlur(layer, (3, 3), 0).astype(np.float32)[..., None] / 255.0
    out = (img * (1 - alpha) + colour * alpha).round().astype(np.uint8)
    changed = np.abs(out.astype(np.int16) - img).max(axis=2) >= 8
    mask = ((alpha[..., 0] >= 0.5) & changed).astype(np.uint8) * 255
    return out, mask


def write_dataset(root: Path, *, category: str = "part", size: int = 64, n_train: int = 40, n_test_good: int = 8, n_defect: int = 4, seed: int = 0) -> Path:
    """Write an MVTec-AD-layout tree under root/category and return that folder."""
    base = Path(root) / category
    for split, n in (("train", n_train), ("test", n_test_good)):
        folder = base / split / "good"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(folder / f"{i:03d}.png"), make_part(size, rng_for(seed, category, split, i)))
    for kind in DEFECT_KINDS:
        (base / "test" / kind).mkdir(parents=True, exist_ok=True)
        (base / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n_defect):
            rng = rng_for(seed, category, kind, i)
            img, mask = add_defect(make_part(size, rng), kind, rng)
            cv2.imwrite(str(base / "test" / kind / f"{i:03d}.png"), img)
            cv2.imwrite(str(base / "ground_truth" / kind / f"{i:03d}_mask.png"), mask)
    return base
