"""Score folders of images with a bundle through the edge's own inference path.

Frames go through edge.preprocess.fit_frame (the camera's crop, the resize to the model input, the
channel conversion) and an edge backend, in batches, so the scores are the ones the line will produce.
Images are read one batch at a time: a few thousand good samples never sit in memory together.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import msgspec
import numpy as np
from tqdm import tqdm

from edge.backends import Backend
from edge.errors import UserError
from edge.files import IMAGE_SUFFIXES
from edge.files import list_images as images_in
from edge.manifest import InputSpec
from edge.preprocess import FrameError, Roi, fit_frame

MapsHook = Callable[[np.ndarray], None]  # receives each batch's anomaly maps (B, H, W) float32


class Scored(msgspec.Struct, frozen=True, kw_only=True):
    """Scores of a set of images, in the order of `paths` (skipped images left out)."""

    paths: list[Path]
    scores: np.ndarray  # float32 (N,)
    maps: np.ndarray | None = None  # float32 (N, H, W) when asked for
    frame_size: str = ""  # "640x480x3": the size of the images as read (before crop and resize)
    resized: bool = False  # the images (or their crop) differ from the model input and were resized, as on the line
    skipped: list[str] = []  # "path: reason" for each image left out (only with skip_bad)
    odd_sizes: list[str] = []  # "path: WxHxC" for images whose size differs from the first (only with allow_mixed)


def list_images(folder: Path, *, role: str, by_type: bool = False) -> list[Path]:
    """Images directly in folder, sorted; with by_type (defects) else those of its subfolders, one per defect type.

    Good samples are never gathered from subfolders: a test/ folder passed as good would mix defects in.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{role} folder {folder} does not exist or is not a folder; pass a folder of images")
    direct = images_in(folder)
    if direct:
        return direct
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir())
    if not by_type:
        hint = f"; did you mean {folder / 'good'}?" if (folder / "good").is_dir() else "; point it at a folder of good images"
        raise UserError(f"{role} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) directly{hint}")
    if any(p.name == "good" for p in subfolders):
        raise UserError(
            f"{role} folder {folder} holds a good/ subfolder; pass only defect folders (e.g. {folder}/<defect type>), "
            "and the good samples with --good"
        )
    found = [p for sub in subfolders for p in images_in(sub)]
    if not found:
        raise UserError(f"{role} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) nor subfolders of them; point it at the samples")
    return found


def read_image(path: Path) -> np.ndarray:
    """As stored (uint8 gray, BGR or BGRA); fit_frame decides whether the model can take it."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FrameError("unreadable (not an image OpenCV can decode)")
    return image


def score_images(
    paths: Sequence[Path],
    backend: Backend,
    spec: InputSpec,
    *,
    crop: Roi | None = None,
    batch: int = 8,
    keep_maps: bool = False,
    on_maps: MapsHook | None = None,
    allow_mixed: bool = False,
    skip_bad: bool = False,
    desc: str = "scoring",
    progress: bool = True,
) -> Scored:
    """Score images in batches; refuse (UserError) an unusable image or a size differing from the first.

    allow_mixed: score images of a different size too (each resized as the line would), listing them.
    skip_bad: leave out unreadable images and channel counts the model cannot take, listing them.
    """
    batch = max(1, min(batch, backend.max_batch))
    kept_paths: list[Path] = []
    scores: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    skipped: list[str] = []
    odd: list[str] = []
    first: tuple[Path, tuple[int, ...]] | None = None
    resized = False
    frames: list[np.ndarray] = []
    pending: list[Path] = []

    def flush() -> None:
        if not frames:
            return
        amap, score = backend.infer(np.stack(frames))
        scores.append(np.asarray(score, np.float32))
        if keep_maps:
            maps.append(np.asarray(amap, np.float32))
        if on_maps is not None:
            on_maps(np.asarray(amap, np.float32))
        kept_paths.extend(pending)
        frames.clear()
        pending.clear()

    with tqdm(total=len(paths), desc=desc, unit="img", file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
        for path in paths:
            try:
                image = read_image(path)
                shape = image.shape if image.ndim == 3 else (*image.shape, 1)
                if first is not None and shape != first[1]:
                    if not allow_mixed:
                        raise UserError(
                            f"{path} is {_size(shape)} but {first[0]} (the first) is {_size(first[1])}: a camera delivers one size; "
                            "remove the odd images or pass --force to resize each as the line would"
                        )
                    odd.append(f"{path}: {_size(shape)}")
                frame, roi = fit_frame(image, spec, crop)
                first = first or (path, shape)
                resized |= (roi.h, roi.w) != (spec.height_px, spec.width_px)
            except FrameError as e:
                if not skip_bad:
                    raise UserError(f"{path}: {e}; the model takes {_model(spec)} — convert or remove it, or --force to skip it") from None
                skipped.append(f"{path}: {e}")
                bar.update(1)
                continue
            frames.append(frame)
            pending.append(path)
            if len(frames) == batch:
                flush()
            bar.update(1)
        flush()
    return Scored(
        paths=kept_paths,
        scores=np.concatenate(scores) if scores else np.empty(0, np.float32),
        maps=np.concatenate(maps) if keep_maps and maps else None,
        frame_size=_size(first[1]) if first else "",
        resized=resized,
        skipped=skipped,
        odd_sizes=odd,
    )


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}x{shape[2] if len(shape) > 2 else 1}"


def _model(spec: InputSpec) -> str:
    return f"{spec.width_px}x{spec.height_px} uint8 {spec.color_order} ({spec.channels} channel{'s' if spec.channels > 1 else ''}; grey and colour are converted)"
