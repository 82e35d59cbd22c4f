"""The network's wiring: any size divisible by 16 in, the same size out, one output per input."""

import torch

from train.model import FilterAE, ModelConfig

TINY = dict(widths=(8, 16, 16), bottleneck_blocks=1, dilations=(1, 2), skip_levels=2)


def test_output_keeps_the_input_shape():
    net = FilterAE(ModelConfig(**TINY)).eval()
    x = torch.randn(2, 3, 32, 48)
    assert net(x).shape == x.shape


def test_each_image_is_filtered_on_its_own():
    # Batch 1 and batch N must agree (the bundle contract); BatchNorm in eval mode keeps them apart.
    net = FilterAE(ModelConfig(**TINY)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x)[1:2], net(x[1:2]), atol=1e-5)
