"""The corruption model: masks cover what changed, opacity honoured, deterministic."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from train.corrupt import CorruptionConfig, corrupt, shape_mask
from train.synthetic import make_part, rng_for


@pytest.fixture(scope="module")
def pool():
    return np.stack([make_part(48, rng_for(1, i)) for i in range(6)])


def test_mask_covers_every_changed_pixel(pool):
    img = pool[0].astype(np.float32) / 255
    cfg = CorruptionConfig(p_clean=0.0)
    for seed in range(60):
        out, alpha = corrupt(img, pool, cfg, np.random.default_rng(seed))
        changed = np.abs(out - img).max(axis=2) > 0
        assert not (changed & (alpha == 0)).any(), f"seed {seed}: pixels changed outside the mask"
        assert alpha.max() > 0
        assert out.dtype == np.float32 and out.shape == img.shape


def test_opacity_range_honoured(pool):
    img = pool[1].astype(np.float32) / 255
    cfg = CorruptionConfig(p_clean=0.0, opacity_min=0.3, opacity_max=0.5, feather_max_px=0.0, max_regions=1)
    for seed in range(40):
        _, alpha = corrupt(img, pool, cfg, np.random.default_rng(seed))
        inside = alpha[alpha > 0]
        assert inside.min() >= 0.3 - 1e-6 and inside.max() <= 0.5 + 1e-6


def test_feathered_alpha_never_exceeds_opacity_max(pool):
    img = pool[1].astype(np.float32) / 255
    cfg = CorruptionConfig(p_clean=0.0, opacity_max=0.6, opacity_min=0.2)
    for seed in range(40):
        _, alpha = corrupt(img, pool, cfg, np.random.default_rng(seed))
        assert alpha.max() <= 0.6 + 1e-6


def test_deterministic_per_seed(pool):
    img = pool[2].astype(np.float32) / 255
    cfg = CorruptionConfig()
    a = corrupt(img, pool, cfg, np.random.default_rng(7))
    b = corrupt(img, pool, cfg, np.random.default_rng(7))
    c = corrupt(img, pool, cfg, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_clean_share_and_disabled(pool):
    img = pool[3].astype(np.float32) / 255
    clean = sum(corrupt(img, pool, CorruptionConfig(p_clean=0.5), np.random.default_rng(s))[1].max() == 0 for s in range(200))
    assert 70 < clean < 130
    out, alpha = corrupt(img, pool, CorruptionConfig(enabled=False), np.random.default_rng(0))
    assert np.array_equal(out, img) and alpha.max() == 0


def test_every_shape_family_draws_a_region():
    for kind in ("polygon", "blob", "stroke"):
        weights = {f"shape_{k}": float(k == kind) for k in ("polygon", "blob", "stroke")}
        cfg = CorruptionConfig(**weights)
        for seed in range(20):
            m = shape_mask(40, 56, cfg, np.random.default_rng(seed))
            assert m.shape == (40, 56) and 0 < m.sum() < 40 * 56


def test_fills_work_without_a_texture_pool():
    img = make_part(32, rng_for(0, "x")).astype(np.float32) / 255
    cfg = CorruptionConfig(p_clean=0.0, fill_noise=0.0, fill_patch=0.0, fill_flat=0.0)  # texture only, no pool
    out, alpha = corrupt(img, None, cfg, np.random.default_rng(0))
    assert alpha.max() > 0 and np.isfinite(out).all()


def test_config_refuses_inverted_ranges():
    with pytest.raises(msgspec.ValidationError, match="size_min"):
        msgspec.convert({"size_min": 0.5, "size_max": 0.1}, CorruptionConfig)
    with pytest.raises(msgspec.ValidationError, match="opacity_min"):
        msgspec.convert({"opacity_min": 0.9, "opacity_max": 0.5}, CorruptionConfig)


def test_gray_image_gets_gray_fills(pool):
    # A coloured fill on a gray part would teach "remove colour", a tell no real defect there has.
    img = np.repeat(pool[2].astype(np.float32).mean(axis=2, keepdims=True) / 255, 3, axis=2)
    for seed in range(40):
        out, alpha = corrupt(img, pool, CorruptionConfig(p_clean=0.0, own_colour=0.0), np.random.default_rng(seed))
        assert alpha.max() > 0
        np.testing.assert_array_equal(out[..., 0], out[..., 1])
        np.testing.assert_array_equal(out[..., 1], out[..., 2])


def test_own_colour_keeps_the_image_hue(pool):
    # A flat-hued orange image: with own_colour = 1 every fill varies only in brightness along that hue.
    img = np.broadcast_to(np.float32([0.2, 0.4, 0.6]), (48, 48, 3)).copy()
    cfg = CorruptionConfig(p_clean=0.0, own_colour=1.0, opacity_min=1.0, feather_max_px=0.0)
    for seed in range(20):
        out, alpha = corrupt(img, pool, cfg, np.random.default_rng(seed))
        inside = out[alpha == 1.0]
        ok = inside[:, 2] < 1.0  # unclipped pixels keep the channel ratios
        np.testing.assert_allclose(inside[ok, 0] * 2, inside[ok, 1], atol=1e-5)
    coloured = [corrupt(img, pool, CorruptionConfig(p_clean=0.0, own_colour=0.0), np.random.default_rng(s))[0] for s in range(20)]
    assert any(np.abs(o[..., 0] * 2 - o[..., 1]).max() > 0.05 for o in coloured)
