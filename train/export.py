"""Export a trained network as a bundle: the whole chain frames -> (anomaly map, score) in one ONNX graph.

Pre-processing (uint8 NHWC -> normalised float NCHW) and post-processing (the residual, fused with the
head's probability when the recipe has a head, Gaussian smoothing, max) live inside the graph, so every
backend takes raw frames and no backend can drift from training. The same module is what evaluation and
the tests compare ONNX Runtime against.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edge.manifest import (
    FORMAT_VERSION,
    INPUT_NAME,
    MAP_NAME,
    MODEL_NAME,
    SCORE_NAME,
    Calibration,
    InputSpec,
    Manifest,
    Provenance,
    write_manifest,
)
from edge.files import sha256_file
from train.out_folder import sibling_dir, swap_in
from train.residual import prewitt_kernel, residual_map

OPSET = 17


def gaussian_kernel(sigma_px: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma_px)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma_px**2))
    return k / k.sum()  # (2r+1,)


class InferenceGraph(nn.Module):
    """frames uint8 (N, H, W, C) -> anomaly_map float32 (N, H, W), score float32 (N,).

    residual: "mse" or "msgms" (train/residual.py). With a head (train/head.py), the map before smoothing is
    head_weight * p + (1 - head_weight) * residual / residual_ref: the head's probability beside the
    residual in units of its typical maximum on good images (residual_ref), so the weight means a share.
    C is input_channels (default: the net's, len(mean)); input_channels = 1 with a 3-channel net copies a
    gray frame into three equal channels, as the net was trained (train/data.py: training_view).
    """

    def __init__(self, net: nn.Module, mean: list[float], std: list[float], smooth_sigma_px: float,
                 row_gain: list[float] | None = None, col_gain: list[float] | None = None, *,
                 residual: str = "mse", head: nn.Module | None = None, head_weight: float = 1.0, residual_ref: float = 1.0,
                 input_channels: int | None = None):
        super().__init__()
        self.net = net
        self.head = head
        self.residual = residual
        self.head_weight = float(head_weight)
        self.residual_ref = float(residual_ref)
        if residual == "msgms":
            self.register_buffer("gms_kernel", prewitt_kernel())
        c = len(mean)
        self.input_channels = input_channels or c
        if self.input_channels not in (1, c):
            raise ValueError(f"input_channels {self.input_channels} for a {c}-channel net; pass {c} or 1")
        # Border correction: the reconstruction error of normal images is higher in the outermost rows and
        # columns (less context there), which would put every good image's maximum on its border. The
        # expected error per row and per column, measured on good images after training (>= 1, 1 inside),
        # divides it out. Empty lists: no correction.
        self.register_buffer("row_gain", torch.tensor(row_gain or [], dtype=torch.float32).view(1, 1, -1, 1))
        self.register_buffer("col_gain", torch.tensor(col_gain or [], dtype=torch.float32).view(1, 1, 1, -1))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))
        k = gaussian_kernel(smooth_sigma_px)
        # Separable smoothing as two 1-D convs: O(r) instead of O(r^2) per pixel.
        self.register_buffer("kx", k.view(1, 1, 1, -1))
        self.register_buffer("ky", k.view(1, 1, -1, 1))
        self.radius = (k.numel() - 1) // 2

    def normalise(self, frames: torch.Tensor) -> torch.Tensor:
        x01 = frames.permute(0, 3, 1, 2).float() / 255.0  # (N, C, H, W) in [0, 1]
        if self.input_channels != self.mean.shape[1]:
            x01 = torch.cat([x01] * self.mean.shape[1], dim=1)  # gray frame -> the net's equal channels (a plain Concat in ONNX)
        return x01, (x01 - self.mean) / self.std

    def residual_of(self, x01: torch.Tensor, recon_norm: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) >= 0, unsmoothed, uncorrected: mse in [0,1]^2 units, or msgms in [0, 1]."""
        recon01 = recon_norm * self.std + self.mean
        return residual_map(self.residual, x01, recon01, getattr(self, "gms_kernel", None))

    def error_map(self, x01: torch.Tensor, recon_norm: torch.Tensor, prob: torch.Tensor | None = None) -> torch.Tensor:
        err = self.residual_of(x01, recon_norm)  # (N, 1, H, W)
        if self.row_gain.numel():
            err = err / (self.row_gain * self.col_gain)
        if prob is not None:  # (N, 1, H, W) in [0, 1]: fused before the (linear) smoothing, so one pass smooths both
            err = prob if self.head_weight >= 1 else self.head_weight * prob + (1 - self.head_weight) / self.residual_ref * err
        r = self.radius
        # Reflect padding needs the pad smaller than the side; replicate works for any size.
        err = F.conv2d(F.pad(err, (r, r, 0, 0), mode="replicate"), self.kx)
        err = F.conv2d(F.pad(err, (0, 0, r, r), mode="replicate"), self.ky)
        return err[:, 0]  # (N, H, W)

    def forward(self, frames: torch.Tensor):
        x01, x = self.normalise(frames)
        recon = self.net(x)
        prob = torch.sigmoid(self.head(x, recon)) if self.head is not None else None
        amap = self.error_map(x01, recon, prob)
        score = amap.flatten(1).amax(dim=1)  # (N,)
        return amap, score


def raw_error(graph: InferenceGraph, frames: np.ndarray, batch: int = 16) -> np.ndarray:
    """Unsmoothed, uncorrected residual (the graph's kind), float32 (N, H, W)."""
    out = []
    graph = graph.eval()
    with torch.no_grad():
        for i in range(0, len(frames), batch):
            x01, x = graph.normalise(torch.from_numpy(np.ascontiguousarray(frames[i : i + batch])))
            out.append(graph.residual_of(x01, graph.net(x))[:, 0].numpy())
    return np.concatenate(out)


def border_gains(err: np.ndarray, margin_frac: float = 0.0625) -> tuple[list[float], list[float]]:
    """Expected error per row and per column of good images, relative to the interior, floored at 1.

    Only the outer margin (1/16 of the side) is corrected: that is where padding costs context; inside,
    any structure of the normal error belongs to the part and is left alone.
    """
    def profile(p: np.ndarray) -> list[float]:
        n = len(p)
        m = max(1, int(round(n * margin_frac)))
        inner = float(np.median(p[m : n - m])) if n > 2 * m else float(np.median(p))
        gain = np.ones(n)
        edge = np.r_[0:m, n - m : n]
        gain[edge] = np.maximum(1.0, p[edge] / max(inner, 1e-12))
        return gain.tolist()

    return profile(err.mean(axis=(0, 2))), profile(err.mean(axis=(0, 1)))


def export_onnx(graph: InferenceGraph, path: Path, height: int, width: int, channels: int) -> None:
    graph = graph.eval()
    dummy = torch.zeros(2, height, width, channels, dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's constant-folding notes say nothing actionable
        torch.onnx.export(
            graph,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[MAP_NAME, SCORE_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, MAP_NAME: {0: "batch"}, SCORE_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter gives a compact graph with a plain dynamic batch axis
        )


def export_torch_program(graph: InferenceGraph, path: Path, height: int, width: int, channels: int) -> None:
    """A torch.export program of the same chain, for the torch-cuda backend (no model code needed to load)."""
    dummy = torch.zeros(2, height, width, channels, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(graph.eval(), (dummy,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def export_bundle(
    graph: InferenceGraph,
    out_dir: Path,
    *,
    height: int,
    width: int,
    channels: int,
    provenance: Provenance,
    calibration: Calibration | None = None,
    history: list[Calibration] | None = None,
    with_torch_program: bool = True,
    report_as: str | None = None,
) -> tuple[Manifest, list[str]]:
    """Write model.onnx (+ model.pt2) and manifest.json into out_dir, replacing an earlier bundle whole.

    Everything is built in a hidden folder beside out_dir and swapped in by rename (train/out_folder.py),
    so an interrupted export leaves the previous bundle intact; of the previous bundle only the files ssae
    wrote go (a new model invalidates its engines), the user's are carried over. Returns the manifest
    and the user's files kept.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_dir(out_dir, "new")
    try:
        export_onnx(graph, tmp / MODEL_NAME, height, width, channels)
        extras = {}
        if with_torch_program:
            export_torch_program(graph, tmp / "model.pt2", height, width, channels)
            extras["model.pt2"] = sha256_file(tmp / "model.pt2")
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            model_id=sha256_file(tmp / MODEL_NAME),
            input=InputSpec(height_px=height, width_px=width, channels=channels, color_order="BGR" if channels == 3 else "GRAY"),
            provenance=provenance,
            calibration=calibration,
            history=list(history or []),
            extras=extras,
        )
        write_manifest(tmp, manifest)
        kept = swap_in(tmp, out_dir, report_as=report_as)
        return manifest, kept
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # our own half-built folder (the user's files in it are links)
        raise


def run_graph(graph: InferenceGraph, frames: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Torch reference of the exported chain on uint8 (N, H, W, C) frames."""
    maps, scores = [], []
    graph = graph.eval()
    with torch.no_grad():
        for i in range(0, len(frames), batch):
            m, s = graph(torch.from_numpy(np.ascontiguousarray(frames[i : i + batch])))
            maps.append(m.numpy())
            scores.append(s.numpy())
    return np.concatenate(maps), np.concatenate(scores)
