"""The whole network in one file: a fully convolutional filtering autoencoder.

Reading order: ConvAct -> DilatedBlock (the bottleneck) -> GatedSkip -> ModelConfig -> FilterAE.

The network is trained to map corrupted images back to normal ones, so on a defective part it outputs
the part as it should look; the reconstruction error is the anomaly map (see train/export.py).
Zero padding left hot spots at image borders in the error map, so every 3x3 conv pads by reflection.
"""

from __future__ import annotations

import msgspec
import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvAct(nn.Sequential):
    """3x3 conv -> BatchNorm -> LeakyReLU. BN folds into the conv at export.

    Reflect padding, except for dilated convs, whose pad can reach the size of a small bottleneck map
    (reflection needs pad < side); those replicate the edge instead.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dilation: int = 1):
        pad_mode = "reflect" if dilation == 1 else "replicate"
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, padding_mode=pad_mode, bias=False),
            nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.1, inplace=True),
        )


class DilatedBlock(nn.Module):
    """Parallel 3x3 convs at several dilations, concatenated, fused by a 1x1 conv, plus a residual.

    Stacking these gives a receptive field of the whole image at the bottleneck without pooling it
    away, so the network can judge a patch against its surroundings (what "normal" means for textures).
    """

    def __init__(self, channels: int, dilations: tuple[int, ...]):
        super().__init__()
        branch = channels // len(dilations)
        self.branches = nn.ModuleList(ConvAct(channels, branch, dilation=d) for d in dilations)
        self.fuse = nn.Sequential(nn.Conv2d(branch * len(dilations), channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x):  # (N, C, h, w) -> (N, C, h, w)
        y = torch.cat([b(x) for b in self.branches], dim=1)
        return self.act(x + self.fuse(y))


class GatedSkip(nn.Module):
    """Mix encoder and decoder features by a learned per-pixel convex combination.

    g = sigmoid(conv([enc, dec])); out = g * enc + (1 - g) * dec. A plain skip would copy a defect
    straight to the output; the gate learns to pass encoder detail only where the input looks normal.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.gate = nn.Conv2d(2 * channels, channels, 1)
        nn.init.constant_(self.gate.bias, -1.0)  # start leaning on the decoder: favour filtering early on

    def forward(self, enc, dec):  # (N, C, h, w) x2 -> (N, C, h, w)
        g = torch.sigmoid(self.gate(torch.cat([enc, dec], dim=1)))
        return g * enc + (1 - g) * dec


class ModelConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    in_channels: int = 3
    # Widths per resolution level: the first runs at 1/2 of the input (after space-to-depth), each further
    # level halves again. Four levels put the bottleneck at 1/16 (16x16 at 256), where dilated convs see
    # the whole frame cheaply.
    widths: tuple[int, ...] = (24, 48, 96, 160)
    bottleneck_blocks: int = 3  # stacked DilatedBlocks
    dilations: tuple[int, ...] = (1, 2, 4, 8)  # per block: receptive field grows to ~ 3 * 2 * 8 * 8 px
    skip_levels: int = 3  # gated skips at the finest N levels below the bottleneck (0 = none)


class FilterAE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        # Space-to-depth first: every conv then runs at half resolution or less (4x cheaper at the top level)
        # while no pixel is thrown away; the head undoes it with a pixel shuffle.
        self.stem = nn.Sequential(nn.PixelUnshuffle(2), ConvAct(4 * cfg.in_channels, w[0]))
        # Encoder: level i (i >= 1) downsamples by a strided conv then refines.
        self.down = nn.ModuleList(nn.Sequential(ConvAct(w[i - 1], w[i], stride=2), ConvAct(w[i], w[i])) for i in range(1, len(w)))
        self.bottleneck = nn.Sequential(*(DilatedBlock(w[-1], cfg.dilations) for _ in range(cfg.bottleneck_blocks)))
        # Decoder: upsample, conv to the next width, gated mix with the encoder feature of that level, refine.
        self.up = nn.ModuleList(ConvAct(w[i], w[i - 1]) for i in range(len(w) - 1, 0, -1))
        n_levels = len(w) - 1
        self.skip_at = {lvl for lvl in range(n_levels) if lvl >= n_levels - cfg.skip_levels}
        self.skips = nn.ModuleDict({str(lvl): GatedSkip(w[len(w) - 2 - lvl]) for lvl in self.skip_at})
        self.refine = nn.ModuleList(ConvAct(w[i - 1], w[i - 1]) for i in range(len(w) - 1, 0, -1))
        self.head = nn.Sequential(nn.Conv2d(w[0], 4 * cfg.in_channels, 3, padding=1, padding_mode="reflect"), nn.PixelShuffle(2))

    def forward(self, x):  # (N, C, H, W) normalised float -> (N, C, H, W)
        feats = [self.stem(x)]  # (N, w0, H/2, W/2)
        for down in self.down:
            feats.append(down(feats[-1]))  # (N, w_i, H/2^(i+1), W/2^(i+1))
        y = self.bottleneck(feats[-1])  # (N, w_last, H/16, W/16)
        for lvl, (up, refine) in enumerate(zip(self.up, self.refine)):
            enc = feats[len(feats) - 2 - lvl]
            y = up(F.interpolate(y, size=enc.shape[-2:], mode="bilinear", align_corners=False))
            if lvl in self.skip_at:
                y = self.skips[str(lvl)](enc, y)
            y = refine(y)
        return self.head(y)  # (N, C, H, W)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
