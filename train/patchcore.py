"""The optional pretrained-feature scorer: PatchCore (Roth et al. 2022) on EfficientNet-Lite0 features.

Reading order: PatchCoreConfig -> PatchFeatures -> patch_features -> greedy_coreset -> PatchCoreGraph.

Nothing is trained. Each good image becomes a grid of patch vectors (two mid-level stages of the ImageNet
backbone, train/backbone.py, each averaged over its 3x3 neighbourhood, the coarser one upsampled to the finer
grid, concatenated); a greedy k-center coreset of all of them is the memory bank. A patch's anomaly is its
distance to the nearest bank vector; the map is that distance upsampled to the input and smoothed, the
score its maximum, as in every bundle. The whole chain, the nearest-neighbour search included, is one graph
(PatchCoreGraph) with the same contract as train/export.py's InferenceGraph: uint8 (N, H, W, C) frames in.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from msgspec import Meta

from train.backbone import MEAN, STD, EfficientNetLite0, same_pad
from train.export import gaussian_kernel


class PatchCoreConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Backbone blocks whose outputs are the features: 4 ends the stride-8 stage (40 ch), 7 the first stride-16
    # one (80 ch). PatchCore's "mid-level": local enough to place a defect, abstract enough to ignore noise.
    layers: tuple[Annotated[int, Meta(ge=0, le=15)], ...] = (4, 7)
    pool: Annotated[int, Meta(ge=1, le=9)] = 3  # local aggregation: each patch averages its pool x pool neighbours
    # Each frame's gain divided out (scaled to mean 0.5) before the backbone: a change of exposure or lamp
    # ageing then moves no feature; without it, good cells at x1.15 exposure lost 0.11 AUROC on real_cells.
    exposure_norm: bool = True
    proj_dim: Annotated[int, Meta(ge=0)] = 0  # > 0: a fixed random projection to this many dims; 0: the raw concat
    coreset_ratio: Annotated[float, Meta(gt=0, le=1)] = 0.02  # share of all training patches kept in the bank ...
    bank_max: Annotated[int, Meta(ge=1)] = 6000  # ... but at most this many (the graph's cost grows with it)
    batch_size: Annotated[int, Meta(ge=1, le=1024)] = 32  # images per feature pass at fit time

    def __post_init__(self):
        if not self.layers or list(self.layers) != sorted(set(self.layers)):
            raise msgspec.ValidationError("patchcore.layers must be increasing block indices, e.g. [4, 10]")


class PatchFeatures(nn.Module):
    """Normalised (N, 3, H, W) -> patch vectors (N, D, ceil(H/s), ceil(W/s)), s the finest layer's stride."""

    def __init__(self, backbone: EfficientNetLite0, cfg: PatchCoreConfig, seed: int = 0):
        super().__init__()
        upto = max(cfg.layers)
        self._conv_stem, self._bn0 = backbone._conv_stem, backbone._bn0
        self._blocks = nn.ModuleList(backbone._blocks[: upto + 1])  # the later blocks never run: kept out of the graph
        self.layers, self.pool, self.upto, self.exposure_norm = tuple(cfg.layers), cfg.pool, upto, cfg.exposure_norm
        dims = sum(self._blocks[i]._bn2.num_features for i in cfg.layers)
        proj = torch.empty(0)
        if cfg.proj_dim:
            # Johnson-Lindenstrauss: a Gaussian matrix scaled by 1/sqrt(k) keeps distances on average.
            g = torch.Generator().manual_seed(seed)
            proj = torch.randn(cfg.proj_dim, dims, generator=g) / cfg.proj_dim**0.5
        self.register_buffer("proj", proj)
        self.dims = cfg.proj_dim or dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, feats = F.relu6(self._bn0(self._conv_stem(same_pad(x, 3, 2)))), []
        for block in self._blocks:  # EfficientNetLite0.features, on the kept blocks
            h = block(h)
            feats.append(h)
        p = self.pool
        maps = [F.avg_pool2d(feats[i], p, 1, p // 2, count_include_pad=False) for i in self.layers]
        size = maps[0].shape[-2:]
        maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps]
        f = torch.cat(maps, dim=1)  # (N, D, h, w)
        if self.proj.numel():
            f = torch.einsum("kd,ndhw->nkhw", self.proj, f)
        return f

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, C) -> the backbone's input (N, 3, H, W); a gray frame becomes three equal channels."""
        x = frames.permute(0, 3, 1, 2).float() / 255.0
        if x.shape[1] == 1:
            x = torch.cat([x, x, x], dim=1)  # a plain Concat in ONNX, as InferenceGraph does
        if self.exposure_norm:
            x = x * (0.5 / x.mean(dim=(1, 2, 3), keepdim=True).clamp(min=1e-3))  # a black frame stays black
        mean = torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std


def patch_features(feat: PatchFeatures, images: np.ndarray, batch: int = 32) -> torch.Tensor:
    """Every patch vector of uint8 (N, H, W, C) images: (N * h * w, D) float32."""
    out = []
    feat = feat.eval()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            f = feat(feat.normalise(torch.from_numpy(np.ascontiguousarray(images[i : i + batch]))))
            out.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
    return torch.cat(out)


def greedy_coreset(x: torch.Tensor, k: int, seed: int = 0, select_dim: int = 128) -> torch.Tensor:
    """Indices of k rows of x chosen by greedy k-center: each next row is the one farthest from those chosen.

    The bank then covers every training patch within the smallest radius this greedy rule finds (a
    2-approximation of the optimum), so rare normal patches keep a neighbour, unlike a random subsample.
    As in PatchCore, distances for the selection are taken in a random projection to select_dim dims.
    """
    n = len(x)
    if k >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    z = x
    if x.shape[1] > select_dim:
        z = x @ (torch.randn(x.shape[1], select_dim, generator=g) / select_dim**0.5)
    z = z.contiguous()
    zz = (z * z).sum(1)
    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = int(torch.randint(n, (1,), generator=g))
    nearest = torch.full((n,), float("inf"))
    for j in range(1, k):
        c = z[chosen[j - 1]]
        d = zz - 2 * (z @ c) + c @ c  # squared distance of every row to the newest centre
        torch.minimum(nearest, d, out=nearest)
        chosen[j] = int(torch.argmax(nearest))
    return chosen


class PatchCoreGraph(nn.Module):
    """frames uint8 (N, H, W, C) -> anomaly_map float32 (N, H, W) >= 0, score float32 (N,) = the map's max."""

    def __init__(self, feat: PatchFeatures, bank: torch.Tensor, smooth_sigma_px: float):
        super().__init__()
        self.feat = feat
        # Distances by ||a||^2 - 2ab + ||b||^2 cancel badly in float32 when the norms dwarf the distance; about
        # the bank's mean the norms are the spread of the features, not their offset.
        center = bank.mean(dim=0)
        bank = bank - center
        self.register_buffer("center", center.view(1, 1, -1))  # (1, 1, D)
        self.register_buffer("bank_t", bank.t().contiguous())  # (D, M): one MatMul against the patches
        self.register_buffer("bank_sq", (bank * bank).sum(1).view(1, 1, -1))  # (1, 1, M)
        k = gaussian_kernel(smooth_sigma_px)
        self.register_buffer("kx", k.view(1, 1, 1, -1))
        self.register_buffer("ky", k.view(1, 1, -1, 1))
        self.radius = (k.numel() - 1) // 2

    def patch_distance(self, frames: torch.Tensor) -> torch.Tensor:
        """Distance of each patch to its nearest bank vector, (N, 1, h, w) >= 0."""
        f = self.feat(self.feat.normalise(frames))  # (N, D, h, w)
        n, _, h, w = f.shape
        p = f.flatten(2).transpose(1, 2) - self.center  # (N, hw, D)
        d2 = (p * p).sum(-1, keepdim=True) - 2 * (p @ self.bank_t) + self.bank_sq  # (N, hw, M): ||a||^2 - 2ab + ||b||^2
        nearest = d2.amin(dim=-1).clamp(min=0).sqrt()  # rounding can make a near-zero distance negative
        return nearest.view(n, 1, h, w)

    def forward(self, frames: torch.Tensor):
        height, width = frames.shape[1], frames.shape[2]
        dist = self.patch_distance(frames)
        amap = F.interpolate(dist, size=(height, width), mode="bilinear", align_corners=False)
        r = self.radius
        amap = F.conv2d(F.pad(amap, (r, r, 0, 0), mode="replicate"), self.kx)
        amap = F.conv2d(F.pad(amap, (0, 0, r, r), mode="replicate"), self.ky)[:, 0]  # (N, H, W)
        score = amap.flatten(1).amax(dim=1)  # (N,)
        return amap, score


def bank_size(n_patches: int, cfg: PatchCoreConfig) -> int:
    return max(1, min(cfg.bank_max, round(n_patches * cfg.coreset_ratio), n_patches))


def build_graph(images: np.ndarray, backbone: EfficientNetLite0, cfg: PatchCoreConfig, *, seed: int, smooth_sigma_px: float) -> tuple[PatchCoreGraph, dict]:
    """The fitted chain from good uint8 images, and what the fit measured (for provenance)."""
    feat = PatchFeatures(backbone, cfg, seed=seed).eval()
    x = patch_features(feat, images, cfg.batch_size)
    idx = greedy_coreset(x, bank_size(len(x), cfg), seed=seed)
    graph = PatchCoreGraph(feat, x[idx].clone(), smooth_sigma_px).eval()
    return graph, {"patches": float(len(x)), "bank_size": float(len(idx)), "feature_dims": float(x.shape[1])}
