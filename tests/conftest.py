"""Shared fixtures: a tiny MVTec-layout dataset on disk and a real exported bundle of a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """root folder holding category "part" (32x32): train/good, test/{good,scratch,dent,spot}, ground_truth."""
    from train.synthetic import write_dataset

    root = tmp_path_factory.mktemp("data")
    write_dataset(root, category="part", size=32, n_train=24, n_test_good=6, n_defect=3, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A real bundle (model.onnx + manifest.json) of a tiny, untrained-but-seeded network at 32x32.

    Scores are arbitrary but deterministic; tests that need a model that has learnt something train
    one themselves (tests/test_train_e2e.py).
    """
    import torch

    from edge.manifest import Provenance
    from train.export import InferenceGraph, export_bundle
    from train.model import FilterAE, ModelConfig

    torch.manual_seed(0)
    net = FilterAE(ModelConfig(widths=(8, 16, 16), bottleneck_blocks=1, dilations=(1, 2), skip_levels=2)).eval()
    graph = InferenceGraph(net, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], smooth_sigma_px=1.0)
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    export_bundle(graph, out, height=32, width=32, channels=3, provenance=Provenance(data="tests", recipe="untrained"), with_torch_program=False)
    return out


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    """A training recipe small enough for a test: a 3-level net at a few steps, checkpoints every 3."""
    cfg = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    cfg.write_text("batch_size = 4\nwarmup_steps = 2\ncheckpoint_every = 3\n[model]\nwidths = [8, 16, 16]\nbottleneck_blocks = 1\ndilations = [1, 2]\nskip_levels = 2\n")
    return cfg
