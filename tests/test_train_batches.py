"""The training batch stream and the weight average: what the loop trains on and what it exports."""

from __future__ import annotations

import numpy as np
import torch

from train.batches import Batches
from train.config import TrainConfig
from train.corrupt import CorruptionConfig
from train.loop import ema_update


def test_held_out_images_never_reach_a_batch_or_a_fill():
    # Training images are dark, the held-out one is white: any white pixel in a batch came from the holdout,
    # either as the image itself or as foreign texture pasted into another.
    images = np.full((6, 16, 16, 3), 40, np.uint8)
    images[4] = 250
    cfg = TrainConfig(noise_std=0.0, corruption=CorruptionConfig(p_clean=0.0, fill_texture=1.0, fill_noise=0.0, fill_patch=0.0,
                                                                  fill_flat=0.0, opacity_min=1.0, max_regions=4, size_min=0.5, size_max=1.0))
    batches = Batches(images, np.array([0, 1, 2, 3, 5]), cfg, rank=0, per_rank=8)
    for step in range(40):
        xin, target, *_ = batches[step]
        assert float(target.max()) < 0.2 and float(xin.max()) < 0.7, step


def test_same_step_same_batch():
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    a, b = Batches(images, np.arange(5), TrainConfig(), 0, 4), Batches(images, np.arange(5), TrainConfig(), 0, 4)
    for x, y in zip(a[3], b[3]):
        assert torch.equal(x, y)
    assert not torch.equal(a[3][0], a[4][0])


def test_ema_moves_towards_the_weights_and_copies_batchnorm_stats():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    ema = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    with torch.no_grad():
        for p in ema.parameters():
            p.zero_()
        for p in net.parameters():
            p.fill_(1.0)
        net[1].running_mean.fill_(3.0)
    ema_update(ema, net, decay=0.5, step=1000)  # past the warm-up: d = 0.5
    assert all(torch.allclose(p, torch.full_like(p, 0.5)) for p in ema.parameters())
    assert torch.equal(ema[1].running_mean, net[1].running_mean)
    ema_update(ema, net, decay=0.999, step=0)  # warm-up: d = 1/10, so the average jumps most of the way
    assert all(torch.allclose(p, torch.full_like(p, 0.95)) for p in ema.parameters())
