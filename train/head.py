"""The learned comparator: a small segmentation head that says where the filter's input is not normal.

Reading order: HeadConfig -> SegHead -> Detector (the filter and its head, what the loop trains).

The filter (train/model.py) repairs what it takes for a defect; its squared error is a poor judge on
stochastic surfaces, where repairing a normal region costs as much as repairing a defect. The head looks
at the input, the repair and their difference side by side and is trained, like DRAEM's discriminative
network, on the corruption's own mask (train/labels.py): it learns *where the two disagree in a way that
the corruption causes*, not how large the squared difference is. No pretrained weights; it runs inside
the same ONNX graph (train/export.py), so the bundle contract does not change.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import torch
import torch.nn as nn
import torch.nn.functional as F
from msgspec import Meta


class HeadConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    # Widths per level: level 0 runs at 1/2 of the input, each next level halves. Three thin levels add 17%
    # to the filter's CPU time at 256 px (bench/model_cost.py): ~39 instead of ~45 images/s on 2 cores.
    widths: tuple[Annotated[int, Meta(ge=4)], ...] = (16, 32, 64)
    dilations: tuple[Annotated[int, Meta(ge=1)], ...] = (1, 2, 4, 8)  # one dilated block at the coarsest level
    detach: bool = False  # True: the head's loss does not reach the filter (DRAEM trains the two jointly)
    loss_weight: Annotated[float, Meta(ge=0)] = 1.0  # head loss relative to the filter's squared error
    focal_gamma: Annotated[float, Meta(ge=0)] = 2.0  # focal modulation: easy pixels (most of them) count less
    dice_weight: Annotated[float, Meta(ge=0)] = 1.0  # soft-dice (overlap) term beside the focal term
    label_tau: Annotated[float, Meta(ge=0, le=1)] = 0.1  # change (in [0,1] units) at which a label is full; 0: binary
    weight: Annotated[float, Meta(ge=0, le=1)] = 1.0  # share of the map from the head; the rest: normalised residual

    def __post_init__(self):
        if not self.widths:
            raise msgspec.ValidationError("head.widths is empty; give at least one width, e.g. [16, 32, 64]")


def conv_act(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """3x3 conv -> BatchNorm -> LeakyReLU with zero padding, which ONNX Runtime fuses into the conv.

    The filter pads by reflection because a border hot spot in its residual would be a false alarm; the
    head is trained on the border like everywhere else (corruptions reach it), so it can learn zero padding,
    and separate reflect-pad ops were a tenth of its time.
    """
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(0.1, inplace=True))


class Context(nn.Module):
    """Parallel dilated 3x3 convs, concatenated, fused by a 1x1 conv, plus a residual: the region's surroundings."""

    def __init__(self, channels: int, dilations: tuple[int, ...]):
        super().__init__()
        branch = max(1, channels // len(dilations))
        self.branches = nn.ModuleList(conv_act(channels, branch, dilation=d) for d in dilations)
        self.fuse = nn.Sequential(nn.Conv2d(branch * len(dilations), channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x):  # (N, C, h, w) -> (N, C, h, w)
        return self.act(x + self.fuse(torch.cat([b(x) for b in self.branches], dim=1)))


class SegHead(nn.Module):
    """[x, f(x), |x - f(x)|] (normalised units) -> defect logits (N, 1, H, W).

    A small U-Net: a strided stem to 1/2 resolution, strided levels, one dilated context block at the
    coarsest level, then back up with additive skips and a pixel shuffle to full resolution. Any even
    side works (each level is upsampled to its skip's own size).
    """

    def __init__(self, cfg: HeadConfig, in_channels: int):
        super().__init__()
        w = cfg.widths
        self.stem = conv_act(2 * in_channels + 1, w[0], stride=2)  # input, repair, channel-mean |difference|
        self.down = nn.ModuleList(nn.Sequential(conv_act(w[i - 1], w[i], stride=2), conv_act(w[i], w[i])) for i in range(1, len(w)))
        self.context = Context(w[-1], tuple(cfg.dilations))
        self.lateral = nn.ModuleList(nn.Conv2d(w[i], w[i - 1], 1, bias=False) for i in range(len(w) - 1, 0, -1))
        self.refine = nn.ModuleList(conv_act(w[i - 1], w[i - 1]) for i in range(len(w) - 1, 0, -1))
        self.out = nn.Sequential(nn.Conv2d(w[0], 4, 3, padding=1), nn.PixelShuffle(2))
        nn.init.constant_(self.out[0].bias, -3.0)  # start at "normal everywhere" (p ~ 0.05), as most pixels are

    def forward(self, x, recon):  # (N, C, H, W) x2, normalised -> (N, 1, H, W) logits
        diff = (x - recon).abs().mean(dim=1, keepdim=True)  # (N, 1, H, W)
        feats = [self.stem(torch.cat([x, recon, diff], dim=1))]  # (N, w0, H/2, W/2)
        for down in self.down:
            feats.append(down(feats[-1]))  # (N, w_i, H/2^(i+1), W/2^(i+1))
        y = self.context(feats[-1])
        for lvl, (lateral, refine) in enumerate(zip(self.lateral, self.refine)):
            enc = feats[len(feats) - 2 - lvl]
            y = F.interpolate(lateral(y), size=enc.shape[-2:], mode="bilinear", align_corners=False)
            y = refine(y + enc)
        return self.out(y)  # (N, 1, H, W)


class Detector(nn.Module):
    """The filter and, when the recipe has one, its head: one module for the optimizer, DDP and the average."""

    def __init__(self, ae: nn.Module, head: SegHead | None, detach: bool = False):
        super().__init__()
        self.ae = ae
        self.head = head
        self.detach = detach

    def forward(self, x):  # (N, C, H, W) normalised -> recon (N, C, H, W), logits (N, 1, H, W) or None
        recon = self.ae(x)
        if self.head is None:
            return recon, None
        return recon, self.head(x, recon.detach() if self.detach else recon)
