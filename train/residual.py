"""The residual: how far the filter's repair is from its input, per pixel, before smoothing.

"mse": the channel-mean squared error in [0, 1]^2 units (the seed paper's map).
"msgms": multi-scale gradient-magnitude similarity (as RIAD and DRAEM use it): 1 - GMS of the gray
images at 1, 1/2, 1/4 and 1/8 resolution, averaged at full resolution, in [0, 1]. It compares edges
rather than intensities, so a repair that is slightly off in tone but has the right structure scores low.
Both are torch code inside the exported graph.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

ResidualName = Literal["mse", "msgms"]
GMS_C = 0.0026  # RIAD's stabiliser, for [0, 1] images
GMS_SCALES = 4


def prewitt_kernel() -> torch.Tensor:
    k = torch.tensor([[1.0, 0.0, -1.0]] * 3) / 3.0  # (3, 3) horizontal gradient
    return torch.stack([k, k.t()]).unsqueeze(1)  # (2, 1, 3, 3): d/dx, d/dy


def gradient_magnitude(gray: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """(N, 1, h, w) -> (N, 1, h, w); replicate padding, so the border has no made-up edge."""
    g = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernel)  # (N, 2, h, w)
    return torch.sqrt((g**2).sum(dim=1, keepdim=True) + 1e-12)


def msgms_map(x01: torch.Tensor, recon01: torch.Tensor, kernel: torch.Tensor, scales: int = GMS_SCALES) -> torch.Tensor:
    """(N, C, H, W) x2 in [0, 1] -> (N, 1, H, W) in [0, 1]: mean over scales of 1 - GMS."""
    a, b = x01.mean(dim=1, keepdim=True), recon01.mean(dim=1, keepdim=True)
    size = x01.shape[-2:]
    total = torch.zeros_like(a)
    for s in range(scales):
        if s:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        ga, gb = gradient_magnitude(a, kernel), gradient_magnitude(b, kernel)
        gms = (2 * ga * gb + GMS_C) / (ga**2 + gb**2 + GMS_C)
        d = 1 - gms
        total = total + (d if not s else F.interpolate(d, size=size, mode="bilinear", align_corners=False))
    return (total / scales).clamp_min(0.0)


def residual_map(mode: str, x01: torch.Tensor, recon01: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) x2 in [0, 1] -> (N, 1, H, W) >= 0, unsmoothed."""
    if mode == "msgms":
        return msgms_map(x01, recon01, kernel)
    return ((recon01 - x01) ** 2).mean(dim=1, keepdim=True)
