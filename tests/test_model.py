"""The network's wiring: any size divisible by 16 in, the same size out.

Batch 1 vs batch N agreement is checked on the exported bundle (tests/test_bundle_contract.py), where the
contract lives.
"""

import torch

from train.model import FilterAE, ModelConfig

TINY = dict(widths=(8, 16, 16), bottleneck_blocks=1, dilations=(1, 2), skip_levels=2)


def test_output_keeps_the_input_shape():
    net = FilterAE(ModelConfig(**TINY)).eval()
    x = torch.randn(2, 3, 32, 48)
    assert net(x).shape == x.shape
