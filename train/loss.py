"""The training losses: the filter's weighted squared error and the head's focal + soft-dice terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from train.head import HeadConfig


def recon_loss(recon: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Squared error weighted per pixel (corrupted regions count more), normalised by the mean weight."""
    return (weight * (recon - target) ** 2).mean() / weight.mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Binary cross-entropy scaled by |target - p| ** gamma: the focal loss, in the form that takes soft labels.

    Almost every pixel is normal and soon easy; the modulation keeps them from drowning the defects.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if gamma == 0:
        return bce.mean()
    return ((target - torch.sigmoid(logits)).abs() ** gamma * bce).mean()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the whole batch: an overlap term, indifferent to how small the defects are.

    Summed over the batch, not per image: a clean image (empty target) then adds only its false positives.
    """
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    return 1 - (2 * inter + eps) / (p.sum() + target.sum() + eps)


def head_loss(logits: torch.Tensor, target: torch.Tensor, cfg: HeadConfig) -> torch.Tensor:
    """logits, target (N, 1, H, W); target in [0, 1] (soft where the corruption barely changed the image)."""
    logits = logits.float()
    return focal_loss(logits, target, cfg.focal_gamma) + cfg.dice_weight * soft_dice_loss(logits, target)
