"""The view's colour scale is anchored to the threshold; the quantised map of the wire is dequantised and coloured by it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.client.view.scale import wire_map
from edge.overlay import GRID_BACKGROUND, MASK_RATIO, dequantise, evidence_rgba, ratio_rgba, render_overlay
from edge.wire import MaskInfo
from viewpage import header


def test_a_value_gets_the_same_colour_whatever_else_the_frame_holds():
    weak = np.full((8, 8), 0.2, np.float32)
    strong = weak.copy()
    weak[0, 0] = strong[0, 0] = 1.5
    strong[7, 7] = 8.0  # a frame with a far worse defect elsewhere
    a, b = evidence_rgba(weak, threshold=2.0), evidence_rgba(strong, threshold=2.0)
    assert (a[0, 0] == b[0, 0]).all(), "colour must not depend on the frame's own maximum"
    assert (a[1, 1] == b[1, 1]).all()


def test_colours_follow_value_over_threshold_not_raw_units():
    amap = np.linspace(0, 3, 64, dtype=np.float32).reshape(8, 8)
    assert (evidence_rgba(amap, 1.0) == evidence_rgba(amap * 7, 7.0)).all()


def test_the_threshold_is_a_visible_step_and_low_evidence_is_not_drawn():
    below, at, low, huge = ratio_rgba(np.array([0.99, 1.0, 0.4, 9.0], np.float32))
    assert low[3] == 0, "below half the threshold nothing is drawn"
    assert at[0] == 255 and at[1] < 100, "at the threshold: orange-red"
    assert below[1] > 200, "just below: yellow"
    assert (huge == ratio_rgba(np.float32(2.0))).all(), "beyond twice the threshold the colour saturates"
    assert (ratio_rgba(np.float32(MASK_RATIO)) == at).all(), "a binary mask pixel is drawn in the threshold's colour"
    alphas = ratio_rgba(np.linspace(0.5, 2, 50, dtype=np.float32))[:, 3]
    assert (np.diff(alphas.astype(int)) >= 0).all(), "more evidence is never drawn fainter"


def test_nan_is_transparent_and_an_uncalibrated_map_is_grey():
    assert ratio_rgba(np.float32("nan"))[3] == 0
    grey = evidence_rgba(np.array([[0.0, 2.0]], np.float32), float("nan"))
    assert grey[0, 1, 0] == grey[0, 1, 1] == grey[0, 1, 2] == 255 and grey[0, 0, 3] == 0


def test_a_quantised_map_is_coloured_as_its_true_values_whatever_its_scale():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 1.2, (16, 16)).astype(np.float32)
    scales = (1.2 / 255, 2.0 / 255)  # two frames quantised on different scales
    away = np.abs(true - 0.6) > max(scales)  # within a code step of the threshold, rounding may cross the colour step
    colours = []
    for scale in scales:
        codes = np.clip(np.rint(true / scale), 0, 255).astype(np.uint8)
        values = dequantise(codes, scale)
        assert np.abs(values - true).max() <= scale / 2 + 1e-6
        colours.append(evidence_rgba(values, threshold=0.6).astype(int)[away])
    assert np.abs(colours[0] - colours[1]).max() <= 12, "the same evidence must look the same on both frames"
    assert np.abs(colours[0] - evidence_rgba(true, 0.6).astype(int)[away]).max() <= 12
    assert away.mean() > 0.9


def test_dequantise_refuses_a_scale_that_is_not_positive():
    with pytest.raises(ValueError, match="map scale"):
        dequantise(np.zeros((2, 2), np.uint8), 0.0)


def test_wire_map_reads_the_expected_map_fields_and_ignores_a_binary_mask():
    codes = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    raw = MaskInfo(encoding="raw", height_px=4, width_px=4, kind="map", map_scale=0.05, map_offset=0.1)
    assert np.allclose(wire_map(raw, codes.tobytes()), 0.1 + codes * 0.05)
    png = MaskInfo(encoding="png", height_px=4, width_px=4, kind="map", map_scale=0.05)
    assert np.allclose(wire_map(png, cv2.imencode(".png", codes)[1].tobytes()), codes * 0.05)
    today = MaskInfo(encoding="raw", height_px=4, width_px=4)  # the wire as it is: a binary mask
    assert wire_map(today, codes.tobytes()) is None
    with pytest.raises(ValueError, match="bytes"):
        wire_map(raw, b"\x00" * 3)


def test_an_overlay_of_a_map_colours_by_evidence_and_keeps_the_rest_dark():
    amap = np.zeros((16, 16), np.float32)
    amap[:, 8:] = 1.0  # right half exactly at the threshold
    img = render_overlay(header(threshold=1.0, grid=16), amap=amap)
    assert img.shape[0] >= 256
    left, right = img[img.shape[0] // 2, img.shape[1] // 4], img[img.shape[0] // 2, 3 * img.shape[1] // 4]
    assert (left == GRID_BACKGROUND).all()
    assert right[2] > 150 and right[0] < 80  # BGR: red-orange


def test_the_mask_is_drawn_inside_the_crop_the_model_saw():
    image = np.full((100, 200, 3), 100, np.uint8)
    h = header(grid=8)
    h = type(h)(**{**{f: getattr(h, f) for f in h.__struct_fields__}, "mask": MaskInfo(encoding="raw", height_px=8, width_px=8, roi_x=100, roi_y=0, roi_w=100, roi_h=100)})
    out = render_overlay(h, mask=np.full((8, 8), 255, np.uint8), image=image)
    assert out.shape == (100, 200, 3)
    assert (out[50, 50] == 100).all(), "outside the crop the frame is untouched"
    assert out[50, 150, 2] > 180 and out[50, 150, 0] < 60
