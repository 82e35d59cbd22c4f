"""From the trained filter and head to the chain the bundle ships, and their weights in a checkpoint.

The loop trains a Detector (train/head.py: the filter, plus the head when the recipe has one). At the end,
the exported graph (train/export.py) needs what only good images can tell: the residual's border gains and,
with a head, the residual's typical maximum, by which the fused map puts the residual in units of its own.
"""

from __future__ import annotations

import numpy as np

from train.config import TrainConfig
from train.export import InferenceGraph, border_gains, raw_error, run_graph
from train.head import Detector, SegHead
from train.model import FilterAE


def build_detector(cfg: TrainConfig) -> Detector:
    head = SegHead(cfg.head, cfg.model.in_channels) if cfg.head.enabled else None
    return Detector(FilterAE(cfg.model), head, detach=cfg.head.detach)


def weights(net: Detector, ae_key: str, head_key: str) -> dict:
    """The filter's state under ae_key (the same keys as before there was a head), the head's under head_key."""
    return {ae_key: net.ae.state_dict(), **({head_key: net.head.state_dict()} if net.head is not None else {})}


def load_weights(net: Detector, state: dict, ae_key: str, head_key: str) -> None:
    net.ae.load_state_dict(state[ae_key])
    if net.head is not None:
        net.head.load_state_dict(state[head_key])


def assemble_graph(net: Detector, cfg: TrainConfig, mean: list[float], std: list[float], width: int,
                   sample: np.ndarray, *, input_channels: int | None = None) -> tuple[InferenceGraph, dict]:
    """The exported chain of trained weights, with what it measures on good images: the border gains of the
    residual and, with a head, the residual's typical maximum (the median over the sample of each image's)."""
    sigma = cfg.sigma_px(width)
    graph = InferenceGraph(net.ae, mean, std, sigma, residual=cfg.residual, input_channels=input_channels)
    row_gain, col_gain = border_gains(raw_error(graph, sample))
    graph = InferenceGraph(net.ae, mean, std, sigma, row_gain, col_gain, residual=cfg.residual, input_channels=input_channels)
    measured = {"row_gain": row_gain, "col_gain": col_gain, "input_channels": input_channels}
    if net.head is not None:
        _, residual_max = run_graph(graph, sample)
        measured["residual_ref"] = max(float(np.median(residual_max)), 1e-12)
        graph = graph_for(net, cfg, mean, std, width, measured)
    return graph, measured


def graph_for(net: Detector, cfg: TrainConfig, mean: list[float], std: list[float], width: int, measured: dict) -> InferenceGraph:
    """The exported chain; measured: what assemble_graph measured (also stored in the checkpoint)."""
    return InferenceGraph(net.ae, mean, std, cfg.sigma_px(width), measured.get("row_gain"), measured.get("col_gain"), residual=cfg.residual,
                          head=net.head, head_weight=cfg.head.weight, residual_ref=measured.get("residual_ref", 1.0),
                          input_channels=measured.get("input_channels"))  # absent in older checkpoints: the net's channels
