"""Training data: the good images of an MVTec-AD category, or a plain folder of good images.

Everything is read once into one uint8 array (N, H, W, C), BGR as OpenCV reads it, because the
datasets this product trains on are a few hundred images and the CPU is better spent on the model.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.errors import UserError
from edge.files import IMAGE_SUFFIXES, list_images


def train_folder(data: Path, category: str | None) -> Path:
    """Where the good training images are: DATA/<category>/train/good, or DATA itself."""
    data = Path(data)
    if not data.is_dir():
        raise UserError(f"dataset {data} does not exist or is not a folder; pass the dataset root")
    if category is None:
        return data
    cat = data / category
    if not cat.is_dir():
        found = sorted(p.name for p in data.iterdir() if (p / "train" / "good").is_dir())
        hint = f"categories found: {', '.join(found)}" if found else "no MVTec-layout categories (<cat>/train/good) found there"
        raise UserError(f"category {category!r} does not exist under {data}; {hint}")
    folder = cat / "train" / "good"
    if not folder.is_dir():
        raise UserError(f"{folder} is missing; an MVTec-AD category keeps its good training images there")
    return folder


def load_images(folder: Path, image_size: int | None = None) -> tuple[np.ndarray, list[Path]]:
    """Read every image of a folder: uint8 (N, H, W, C). All must share size and channels.

    image_size resizes (INTER_AREA) to a square of that side, as the line's pre-processing does.
    """
    paths = list_images(folder)
    if not paths:
        raise UserError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); put the good images there")
    images = []
    first_shape = None
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise UserError(f"{p} cannot be read as an image; remove or replace it")
        if img.dtype != np.uint8:
            raise UserError(f"{p} is {img.dtype}; training takes 8-bit images, convert it")
        if img.ndim == 3 and img.shape[2] == 4:
            raise UserError(f"{p} has an alpha channel; save it as 3-channel BGR or grayscale")
        if img.ndim == 2:
            img = img[..., None]
        if first_shape is None:
            first_shape = img.shape
        elif img.shape != first_shape:
            raise UserError(
                f"{p} is {img.shape[1]}x{img.shape[0]}x{img.shape[2]} but {paths[0].name} is "
                f"{first_shape[1]}x{first_shape[0]}x{first_shape[2]}; all training images must share size and channels"
            )
        if image_size and img.shape[:2] != (image_size, image_size):
            img = cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_AREA).reshape(image_size, image_size, -1)
        images.append(img)
    return np.stack(images), paths


def training_view(images: np.ndarray) -> np.ndarray:
    """What the network trains on: a single-channel set as its copy in three equal channels.

    The recipe is tuned on 3-channel images, and on one channel it is not the same recipe: a gray fill
    is the mean of three drawn colours there but one draw here (a wider spread of levels, so corruptions
    ~20 % stronger on average), the Gaussian noise is three draws per pixel there but one here, and the
    random streams part after the first fill. Training the copy makes a gray set train exactly as its
    3-channel copy does; the exported graph copies the frame's one channel into three (train/export.py).
    """
    return np.repeat(images, 3, axis=3) if images.shape[3] == 1 else images


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units; baked into the exported graph's normalisation."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    std = np.maximum(x.std(axis=0), 1e-3)
    return x.mean(axis=0).tolist(), std.tolist()


def split_holdout(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, holdout): a few good images kept out for the provisional threshold."""
    order = rng.permutation(n)
    k = int(round(n * fraction)) if n >= 10 else 0
    return np.sort(order[k:]), np.sort(order[:k])
