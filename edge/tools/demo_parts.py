"""The demo's parts: its options, the still images for training and calibration, and the video with its truth.

Everything is drawn by the project's own generator (train/synthetic.py, numpy + OpenCV), seeded per image,
so a clone of the project alone makes the same parts on any machine. Stills are JPEG-compressed at the
video's quality, so the model and the threshold see the compression artefacts the daemon reads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import msgspec
import numpy as np

from edge.errors import UserError


class DemoOptions(msgspec.Struct, frozen=True, kw_only=True):
    size_px: int = 64  # parts and model input; small so that training takes a couple of minutes on 2 cores
    train_images: int = 200
    train_steps: int = 600
    train_budget_min: float = 0.0  # > 0: training stops there even if steps remain (slow or busy machines)
    # A smaller network than the 256 px default (0.53 M parameters, a 2 MB bundle): the parts are 64 px and simple.
    widths: tuple[int, ...] = (16, 32, 64, 96)
    bottleneck_blocks: int = 2
    dilations: tuple[int, ...] = (1, 2, 4)
    skip_levels: int = 3
    calib_good: int = 300  # a 2% target at 95% confidence may then take the 2nd-largest good score
    calib_defect: int = 30
    # 2%, not a production-like 0.1%: 300 goods cannot back less than 1%, and at 1% the single most unusual
    # good part sets the threshold and faint scratches pass; the summary shows the trade-off either way.
    target_false_reject: float = 0.02
    frames: int = 120
    defect_fraction: float = 0.25
    jpeg_quality: int = 95  # video and stills alike
    seed: int = 0

    def training_key(self) -> dict:
        """What the trained bundle depends on: a cached bundle is reused only when these match."""
        keys = ("size_px", "train_images", "train_steps", "train_budget_min", "widths", "bottleneck_blocks", "dilations",
                "skip_levels", "jpeg_quality", "seed")
        return {k: msgspec.to_builtins(getattr(self, k)) for k in keys}


TINY = DemoOptions(size_px=32, train_images=24, train_steps=6, train_budget_min=1.0, widths=(8, 16), bottleneck_blocks=1,
                   dilations=(1, 2), skip_levels=1, calib_good=60, calib_defect=9, target_false_reject=0.05, frames=16)


class FrameTruth(msgspec.Struct, frozen=True, kw_only=True):
    index: int  # frame number in the video = the daemon's seq for this camera
    defect: str | None  # kind planted, None for a good part
    box: tuple[int, int, int, int] | None = None  # x, y, w, h of the planted mask


def jpeg(img: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2.imencode('.jpg') failed")
    return data.tobytes()


def part(opts: DemoOptions, role: str, i: int, kind: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """One part (and its defect mask when kind is given); role keeps training, calibration and video apart."""
    from train.synthetic import add_defect, make_part, rng_for

    rng = rng_for(opts.seed, "demo", role, i)
    img = make_part(opts.size_px, rng)
    if kind is None:
        return img, None
    return add_defect(img, kind, rng)


def write_stills(opts: DemoOptions, data: Path) -> tuple[Path, Path, Path, Path]:
    """train/good, calib/good, calib/defect/<kind>, calib/ground_truth/<kind> (JPEG stills, PNG masks)."""
    from train.synthetic import DEFECT_KINDS

    train_dir, good_dir, defect_dir, masks_dir = data / "train" / "good", data / "calib" / "good", data / "calib" / "defect", data / "calib" / "ground_truth"
    if data.is_dir():
        shutil.rmtree(data)  # stale stills of another run's options would mix in
    for folder in (train_dir, good_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(opts.train_images):
        (train_dir / f"{i:04d}.jpg").write_bytes(jpeg(part(opts, "train", i)[0], opts.jpeg_quality))
    for i in range(opts.calib_good):
        (good_dir / f"{i:04d}.jpg").write_bytes(jpeg(part(opts, "calib-good", i)[0], opts.jpeg_quality))
    for i in range(opts.calib_defect):
        kind = DEFECT_KINDS[i % len(DEFECT_KINDS)]
        img, mask = part(opts, "calib-defect", i, kind)
        (defect_dir / kind).mkdir(parents=True, exist_ok=True)
        (masks_dir / kind).mkdir(parents=True, exist_ok=True)
        (defect_dir / kind / f"{i:04d}.jpg").write_bytes(jpeg(img, opts.jpeg_quality))
        cv2.imwrite(str(masks_dir / kind / f"{i:04d}_mask.png"), mask)
    return train_dir, good_dir, defect_dir, masks_dir


def write_video(opts: DemoOptions, path: Path) -> list[FrameTruth]:
    """The demo stream: good parts with defects planted in a seeded random defect_fraction of frames."""
    from train.synthetic import DEFECT_KINDS

    rng = np.random.default_rng([opts.seed, 7])
    defective = set(rng.choice(opts.frames, size=max(1, round(opts.frames * opts.defect_fraction)), replace=False).tolist())
    truth: list[FrameTruth] = []
    s = opts.size_px
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (s, s))
    if not writer.isOpened():
        raise UserError(f"OpenCV cannot write an MJPG video at {path}; check the folder is writable")
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, opts.jpeg_quality)
    try:
        for i in range(opts.frames):
            kind = DEFECT_KINDS[len([j for j in defective if j < i]) % len(DEFECT_KINDS)] if i in defective else None
            img, mask = part(opts, "video", i, kind)
            box = None
            if mask is not None and mask.any():
                x, y, w, h = cv2.boundingRect(mask)
                box = (x, y, w, h)
            writer.write(img)
            truth.append(FrameTruth(index=i, defect=kind, box=box))
    finally:
        writer.release()
    return truth
