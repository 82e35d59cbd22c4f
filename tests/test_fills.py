"""Near-distribution fills, Poisson blending, the head's soft labels and the MSGMS residual."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.corrupt import CorruptionConfig, corrupt, shape_mask
from train.fills import near_fill, poisson_blend
from train.labels import visible_change
from train.residual import msgms_map, prewitt_kernel
from train.synthetic import make_part, rng_for


@pytest.fixture(scope="module")
def pool():
    return np.stack([make_part(48, rng_for(2, i)) for i in range(6)])


def test_poisson_blend_changes_only_the_region_and_keeps_its_place(pool):
    img = pool[0].astype(np.float32) / 255
    for seed in range(30):
        rng = np.random.default_rng(seed)
        region = shape_mask(48, 48, CorruptionConfig(), rng)
        other = pool[1].astype(np.float32) / 255
        out = poisson_blend(other, img, region, rng)
        assert out.shape == img.shape and out.dtype == np.float32
        if region.any() and min(np.ptp(np.nonzero(region)[0]), np.ptp(np.nonzero(region)[1])) >= 2:
            np.testing.assert_array_equal(out[region == 0], img[region == 0])
        # Cloning an image into itself gives it back: the region lands where it was taken from.
        same = poisson_blend(img, img, region, np.random.default_rng(0))
        assert np.abs(same - img).max() <= 3 / 255


def test_poisson_blend_on_gray_and_tiny_regions(pool):
    gray = pool[2].astype(np.float32).mean(axis=2, keepdims=True) / 255  # one channel
    region = np.zeros((48, 48), np.float32)
    region[10:30, 5:25] = 1
    out = poisson_blend(np.full_like(gray, 0.9), gray, region, np.random.default_rng(1))
    assert out.shape == gray.shape and np.isfinite(out).all()
    tiny = np.zeros((48, 48), np.float32)
    tiny[4, 4:6] = 1  # under 3 px across: OpenCV refuses it, the fill comes back for the usual alpha blend
    fill = np.full_like(gray, 0.5)
    assert poisson_blend(fill, gray, tiny, np.random.default_rng(0)) is fill


def test_near_fill_is_another_good_image_rescaled(pool):
    img = pool[0].astype(np.float32) / 255
    fills = [near_fill(img, pool, np.random.default_rng(s)) for s in range(10)]
    assert all(f.shape == img.shape and f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1 for f in fills)
    assert all(np.abs(f - img).mean() > 0.01 for f in fills)  # never the image itself in place
    assert near_fill(img, None, np.random.default_rng(0)).shape == img.shape  # no pool: the image's own content


def test_corruption_with_near_fills_and_poisson_keeps_its_contract(pool):
    """The mask still covers every changed pixel; gray stays gray; the stream is seeded."""
    img = pool[3].astype(np.float32) / 255
    cfg = CorruptionConfig(p_clean=0.0, fill_near=1.0, poisson=0.7)
    for seed in range(40):
        out, alpha = corrupt(img, pool, cfg, np.random.default_rng(seed))
        changed = np.abs(out - img).max(axis=2) > 0
        assert not (changed & (alpha == 0)).any(), seed
    gray = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)
    for seed in range(20):
        out, _ = corrupt(gray, pool, cfg, np.random.default_rng(seed))
        np.testing.assert_array_equal(out[..., 0], out[..., 1])
        np.testing.assert_array_equal(out[..., 1], out[..., 2])
    a, b = (corrupt(img, pool, cfg, np.random.default_rng(5)) for _ in range(2))
    assert np.array_equal(a[0], b[0])


def test_seed_paper_stream_unchanged_with_the_new_fills_off():
    """fill_near = 0 picks exactly what the four old fills picked (one uniform against the same cumulative
    weights), and poisson = 0 draws nothing: the residual recipe trains on the stream it always did."""
    from train.corrupt import _pick

    for seed in range(50):
        old = _pick(np.random.default_rng(seed), ("a", "b", "c", "d"), (1.0, 0.6, 1.0, 0.5))
        new = _pick(np.random.default_rng(seed), ("a", "b", "c", "d", "e"), (1.0, 0.6, 1.0, 0.5, 0.0))
        assert old == new


def test_soft_label_follows_the_visible_change():
    clean = np.full((24, 24, 3), 0.5, np.float32)
    alpha = np.zeros((24, 24), np.float32)
    alpha[6:18, 6:18] = 1.0
    strong, faint, same = clean.copy(), clean.copy(), clean.copy()
    strong[6:18, 6:18] = 0.9
    faint[6:18, 6:18] = 0.52  # a fill of nearly the surface's own tone
    assert visible_change(clean, strong, alpha, 0.1)[8:16, 8:16].min() == pytest.approx(1.0)
    assert visible_change(clean, faint, alpha, 0.1)[8:16, 8:16].max() == pytest.approx(0.2, abs=1e-3)
    assert visible_change(clean, same, alpha, 0.1).max() == 0
    assert (visible_change(clean, strong, alpha, 0.1)[alpha == 0] == 0).all()  # never outside the region
    np.testing.assert_array_equal(visible_change(clean, same, alpha, 0.0), alpha > 0)  # tau 0: the binary mask


def test_msgms_is_zero_for_a_perfect_repair_and_sees_edges():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    k = prewitt_kernel()
    assert float(msgms_map(x, x, k).abs().max()) < 1e-6
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    shifted_tone = (x * 0.9 + 0.05).clamp(0, 1)
    m_edges, m_tone = msgms_map(x, blurred, k), msgms_map(x, shifted_tone, k)
    assert m_edges.shape == (2, 1, 32, 32) and (m_edges >= 0).all() and (m_edges <= 1).all()
    assert float(m_edges.mean()) > 3 * float(m_tone.mean())  # structure counts, a small change of tone hardly
