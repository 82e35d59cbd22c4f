"""The stream of training batches: batch k is a pure function of (seed, rank, k).

Making a batch is numpy work on the CPU (~5 ms per 128² image on one core: corruption, noise), so
one process cannot keep a GPU fed; `workers` processes make batches ahead of the training step.
Seeding each batch by its own step number makes the stream identical whether 0 or 16 workers make
it, and lets `--resume` restart the stream at the checkpoint's step with no RNG state to carry.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from train.config import TrainConfig
from train.corrupt import corrupt
from train.labels import visible_change


def make_batch(images: np.ndarray, idx: np.ndarray, cfg: TrainConfig, rng: np.random.Generator):
    """-> (input, target, weight, label) float32 tensors (B, C, H, W), (B, C, H, W), (B, 1, H, W), (B, 1, H, W).

    input and target in [0, 1] units; weight: the filter's loss weight per pixel; label: what the head
    must find, the corruption's mask softened where it changed little (train/labels.py).

    images: the training images only; they are also the pool of foreign texture, so no held-out image
    is ever seen in training (it sets the provisional threshold).
    """
    xs, ins, alphas, labels = [], [], [], []
    for i in idx:
        x = images[i].astype(np.float32) / 255.0  # (H, W, C)
        if cfg.hflip and rng.random() < 0.5:
            x = x[:, ::-1]
        if cfg.vflip and rng.random() < 0.5:
            x = x[::-1]
        if cfg.rot90:
            x = np.rot90(x, int(rng.integers(4)))
        x = np.ascontiguousarray(x)
        xc, alpha = corrupt(x, images, cfg.corruption, rng)
        xs.append(x)
        ins.append(xc)
        alphas.append(alpha)
        labels.append(visible_change(x, xc, alpha, cfg.head.label_tau))
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2)
    xc = torch.from_numpy(np.stack(ins)).permute(0, 3, 1, 2)
    alpha = torch.from_numpy(np.stack(alphas))[:, None]
    noise = torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32)) * cfg.noise_std
    # Input = corrupt(x) + eps. The default recipe keeps eps in the target too (identity-anchoring: the
    # network must not learn to denoise, only to remove what is not normal); "denoising" does not.
    target = x + noise if cfg.noise_in_target else x
    weight = 1.0 + (cfg.region_weight - 1.0) * (alpha > 0).float()
    label = torch.from_numpy(np.stack(labels))[:, None]
    return xc + noise, target, weight, label


class Batches(Dataset):
    """Indexed by step: the batch a rank trains on at that step."""

    def __init__(self, images: np.ndarray, train_idx: np.ndarray, cfg: TrainConfig, rank: int, per_rank: int):
        self.images = images[train_idx]  # (N_train, H, W, C): the held-out images stay out of batches and fills
        self.cfg, self.rank, self.per_rank = cfg, rank, per_rank

    def __len__(self) -> int:
        return self.cfg.steps

    def __getitem__(self, step: int):
        rng = np.random.default_rng([self.cfg.seed, self.rank, step])
        idx = rng.integers(0, len(self.images), self.per_rank)
        return make_batch(self.images, idx, self.cfg, rng)


def resolve_workers(requested: int, on_gpu: bool, world: int) -> int:
    """-1 = auto: none on a CPU-only box (its cores run the model), else the cores this rank can spare, up to 8."""
    if requested >= 0:
        return requested
    if not on_gpu:
        return 0
    return max(0, min(8, (os.cpu_count() or 1) // world - 1))


def batch_stream(images: np.ndarray, train_idx: np.ndarray, cfg: TrainConfig, *, rank: int, per_rank: int, start: int,
                 workers: int, pin: bool):
    """Batches for steps start..cfg.steps-1, in order; with workers > 0, made ahead in worker processes."""
    return DataLoader(
        Batches(images, train_idx, cfg, rank, per_rank),
        batch_size=None,  # each item is already a batch
        sampler=range(start, cfg.steps),
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        pin_memory=pin,  # page-locked host batches copy to the GPU asynchronously
    )
