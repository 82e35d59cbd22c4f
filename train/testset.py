"""Find and read a labelled test split: MVTec AD layout, or a plain folder of good/ and defect folders.

    MVTec AD:      <root>/<category>/test/good/*.png
                   <root>/<category>/test/<defect>/*.png
                   <root>/<category>/ground_truth/<defect>/<stem>_mask.png   (optional: pixel metrics)
    plain folder:  <root>/good/*.png, <root>/<defect>/*.png [, <root>/ground_truth/<defect>/<stem>_mask.png]

Without ground_truth/ only image-level metrics exist, and the result says so. Every error is one line
naming the path and the fix (UserError). No torch here: evaluation runs the bundle through ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import msgspec
import numpy as np

from edge.errors import UserError
from edge.files import IMAGE_SUFFIXES

GOOD = "good"
MASKS = "ground_truth"


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    path: Path
    defect: str  # "good" or the defect folder's name
    mask_path: Path | None = None  # set for defect images when the set has masks


class EvalSplit(msgspec.Struct, frozen=True, kw_only=True):
    root: Path  # the folder holding good/ and the defect folders
    category: str | None
    layout: Literal["mvtec", "folder"]
    has_masks: bool
    samples: tuple[Sample, ...]
    ignored: tuple[Path, ...] = ()  # files in the image folders that are not images (reported, not read)

    @property
    def defect_types(self) -> list[str]:
        return sorted({s.defect for s in self.samples if s.defect != GOOD})


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _categories(root: Path) -> list[str]:
    return [p.name for p in _subdirs(root) if (p / "test").is_dir()]


def _resolve(data_root: Path, category: str | None) -> tuple[Path, Path, str | None, Literal["mvtec", "folder"]]:
    """-> (folder holding good/ + defect folders, ground_truth folder, category, layout)."""
    if not data_root.exists():
        raise UserError(f"{data_root} does not exist; pass the dataset root (MVTec layout) or a folder with good/ and defect folders")
    if not data_root.is_dir():
        raise UserError(f"{data_root} is not a folder; pass the dataset root, not a file")
    if category is not None:
        base = data_root / category
        if not base.is_dir():
            found = _categories(data_root) or [p.name for p in _subdirs(data_root)]
            listing = ", ".join(found) if found else "none"
            raise UserError(f"category {category!r} not found in {data_root}; categories there: {listing} (pass one with --category)")
    elif (data_root / "test").is_dir() or (data_root / GOOD).is_dir():
        base = data_root
    else:
        found = _categories(data_root)
        if len(found) == 1:
            base, category = data_root / found[0], found[0]
        elif found:
            raise UserError(f"{data_root} holds several categories ({', '.join(found)}); pass one with --category")
        else:
            raise UserError(f"{data_root} holds neither <category>/test/ (MVTec layout), test/ nor good/ (plain folder); point at the dataset root")
    if (base / "test").is_dir():
        return base / "test", base / MASKS, category or base.name, "mvtec"
    if (base / GOOD).is_dir():
        return base, base / MASKS, category, "folder"
    raise UserError(f"{base / 'test'} is missing; an MVTec-layout category holds test/good/ and test/<defect>/ folders")


def _images(folder: Path, ignored: list[Path]) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    ignored.extend(p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); add test images or remove the folder")
    return images


def _mask_for(image: Path, masks_dir: Path, defect: str) -> Path:
    folder = masks_dir / defect
    for candidate in (folder / f"{image.stem}_mask.png", folder / f"{image.stem}.png"):
        if candidate.is_file():
            return candidate
    raise UserError(
        f"no mask for {image}: expected {folder / (image.stem + '_mask.png')}; add it, "
        f"or remove {masks_dir} to evaluate image-level metrics only"
    )


def find_testset(data_root: str | Path, category: str | None = None) -> EvalSplit:
    """Locate the test split and pair every defect image with its mask; reads no pixels."""
    test_dir, masks_dir, category, layout = _resolve(Path(data_root), category)
    if not (test_dir / GOOD).is_dir():
        raise UserError(f"{test_dir / GOOD} is missing; image AUROC needs good test images there")
    has_masks = masks_dir.is_dir()
    defects = [p.name for p in _subdirs(test_dir) if p.name not in (GOOD, MASKS)]
    if not defects:
        raise UserError(f"{test_dir} has good/ but no defect folders; add test/<defect>/ folders with defective images")
    ignored: list[Path] = []
    samples = [Sample(path=p, defect=GOOD) for p in _images(test_dir / GOOD, ignored)]
    for defect in defects:
        for p in _images(test_dir / defect, ignored):
            mask = _mask_for(p, masks_dir, defect) if has_masks else None
            samples.append(Sample(path=p, defect=defect, mask_path=mask))
    return EvalSplit(root=test_dir, category=category, layout=layout, has_masks=has_masks, samples=tuple(samples), ignored=tuple(ignored))


def _describe(shape: tuple[int, ...], channels: bool = True) -> str:
    size = f"{shape[1]}x{shape[0]}"
    if not channels:
        return size
    return f"{size} with {shape[2] if len(shape) == 3 else 1} channel(s)"


def read_image(path: Path, expect_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) as stored (BGR/BGRA); refuses a size or channel count unlike expect_shape."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UserError(f"cannot read image {path} (corrupt or not an image); replace or remove it")
    if image.dtype != np.uint8:
        raise UserError(f"{path} is {image.dtype}; the model takes 8-bit images: convert it to 8 bits per channel")
    if expect_shape is not None and image.shape != expect_shape:
        raise UserError(
            f"{path} is {_describe(image.shape)} but the other test images are {_describe(expect_shape)}; "
            "all test images must share size and channels: convert or remove it"
        )
    return image


def read_mask(mask_path: Path, image_path: Path, image_shape: tuple[int, ...]) -> np.ndarray:
    """bool (H, W) of the image's size: True on anomalous pixels (any non-zero value)."""
    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise UserError(f"cannot read mask {mask_path} (corrupt or not an image); replace it")
    if mask.shape != image_shape[:2]:
        raise UserError(
            f"mask {mask_path} is {_describe(mask.shape, False)} but its image {image_path} is {_describe(image_shape, False)}; "
            "masks must match their images pixel for pixel: re-save the mask at the image's size"
        )
    return mask > 0
