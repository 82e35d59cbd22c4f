"""Calibration decisions on synthetic scores (refusals, methods, evidence) and scoring through the edge path."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from calibrate import rules
from calibrate.fit import CalibrationRefused, FitOptions, PixelChoice, decide, find_mask, fit_folders
from calibrate.score import list_images, score_images
from edge.backends import open_backend
from edge.bundle import load_bundle
from edge.errors import UserError
from edge.preprocess import Roi

RNG = np.random.default_rng(11)
GOOD = 1.0 + RNG.gamma(4.0, 0.1, 3000)
DEFECTS = 2.2 + RNG.gamma(2.0, 0.5, 40)


def test_good_only_order_statistic_with_evidence():
    r = decide(GOOD, None, None, FitOptions(), source="synthetic")
    cal = r.calibration
    assert cal.method == "good-only-order-statistic"
    assert cal.image_threshold == GOOD.max()  # 3000 samples: k = 1 at p = 0.001, c = 0.95
    assert cal.false_reject.events == 0 and cal.false_reject.trials == 3000
    assert cal.false_reject.upper <= 0.001 and not cal.false_reject.in_sample
    assert cal.expected_false_reject == cal.false_reject.upper
    assert cal.escape is None and cal.n_good == 3000 and cal.good_stats.max == GOOD.max()
    assert cal.pixel_threshold == cal.image_threshold and cal.pixel_method == "image-threshold"


def test_recall_at_frr_measures_escapes_on_unseen_defects():
    r = decide(GOOD, DEFECTS, None, FitOptions(), source="synthetic")
    cal = r.calibration
    assert cal.method == "recall-at-frr" and cal.image_threshold == GOOD.max()
    missed = int(np.sum(DEFECTS <= cal.image_threshold))
    assert (cal.escape.events, cal.escape.trials) == (missed, 40) and not cal.escape.in_sample
    assert cal.escape.upper == pytest.approx(rules.clopper_pearson_upper(missed, 40, 0.95))
    assert cal.auroc == pytest.approx(rules.auroc(GOOD, DEFECTS))


def test_best_f1_is_marked_in_sample():
    r = decide(GOOD[:200], DEFECTS, None, FitOptions(rule="best-f1"), source="synthetic")
    cal = r.calibration
    assert cal.method == "best-f1" and cal.target_false_reject is None
    assert cal.false_reject.in_sample and cal.escape.in_sample
    assert cal.expected_false_reject == cal.false_reject.rate


def test_too_few_goods_refused_with_the_numbers_and_forced_tail_is_labelled():
    with pytest.raises(CalibrationRefused, match=r"100 given, 2995 needed.*--target-false-reject to 0\.03"):
        decide(GOOD[:100], None, None, FitOptions(), source="synthetic")
    r = decide(GOOD[:100], None, None, FitOptions(force=True), source="synthetic")
    assert r.calibration.method == "good-only-tail-extrapolation"
    assert r.calibration.image_threshold >= GOOD[:100].max()
    assert "EXTRAPOLATED" in r.calibration.note and "forced: too few good samples" in r.calibration.note
    with pytest.raises(CalibrationRefused, match="even a forced tail fit needs 10"):
        decide(GOOD[:5], None, None, FitOptions(force=True), source="synthetic")


def test_defects_scoring_below_goods_are_refused_unless_forced():
    low = GOOD[:40] - 0.5
    with pytest.raises(CalibrationRefused, match=r"AUROC 0\.\d+ < 0\.5.*most defects pass: 40 of 40"):
        decide(GOOD, low, None, FitOptions(), source="synthetic")
    r = decide(GOOD, low, None, FitOptions(force=True), source="synthetic")
    assert r.calibration.auroc < 0.5 and any("forced: defects score below" in w for w in r.warnings)


def test_best_f1_with_too_few_samples_is_refused():
    with pytest.raises(CalibrationRefused, match="too few samples for best F1"):
        decide(GOOD[:50], DEFECTS[:3], None, FitOptions(rule="best-f1"), source="synthetic")
    with pytest.raises(UserError, match="needs labelled defects"):
        decide(GOOD, None, None, FitOptions(rule="best-f1"), source="synthetic")


def test_pixel_threshold_capped_at_image_threshold():
    r = decide(GOOD, None, PixelChoice(threshold=99.0, method="mask-best-f1", detail="x"), FitOptions(), source="s")
    assert r.calibration.pixel_threshold == r.calibration.image_threshold
    assert "capped at the image threshold" in r.pixel_detail


def _ort_scores(bundle, paths):
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    frames = np.stack([cv2.imread(str(p)) for p in paths])
    return sess.run(["score"], {"frames": frames})[0]


def test_score_images_matches_a_bare_onnx_session_and_keeps_maps(tiny_bundle, tiny_dataset):
    paths = list_images(tiny_dataset / "part" / "train" / "good", role="good")
    bundle = load_bundle(tiny_bundle)
    backend = open_backend(bundle, max_batch=5)
    try:
        got = score_images(paths, backend, bundle.manifest.input, batch=5, keep_maps=True, progress=False)
    finally:
        backend.close()
    np.testing.assert_allclose(got.scores, _ort_scores(tiny_bundle, paths), rtol=1e-6, atol=1e-7)
    assert got.maps.shape == (len(paths), 32, 32) and got.paths == paths and not got.resized
    np.testing.assert_allclose(got.maps.reshape(len(paths), -1).max(axis=1), got.scores, rtol=1e-6)


def test_images_of_another_size_are_resized_like_the_line_but_mixed_sizes_refused(tiny_bundle, tiny_dataset, tmp_path):
    src = list_images(tiny_dataset / "part" / "train" / "good", role="good")[:4]
    folder = tmp_path / "big"
    folder.mkdir()
    for p in src:
        cv2.imwrite(str(folder / p.name), cv2.resize(cv2.imread(str(p)), (64, 48)))
    bundle = load_bundle(tiny_bundle)
    backend = open_backend(bundle)
    try:
        same = score_images(list_images(folder, role="good"), backend, bundle.manifest.input, progress=False)
        assert same.resized and same.frame_size == "64x48x3" and same.scores.size == 4
        cv2.imwrite(str(folder / "zz_odd.png"), cv2.imread(str(src[0])))
        with pytest.raises(UserError, match=r"zz_odd.png is 32x32x3 but .* is 64x48x3.*--force"):
            score_images(list_images(folder, role="good"), backend, bundle.manifest.input, progress=False)
        forced = score_images(list_images(folder, role="good"), backend, bundle.manifest.input, allow_mixed=True, progress=False)
        assert forced.scores.size == 5 and forced.odd_sizes == [f"{folder / 'zz_odd.png'}: 32x32x3"]
        cv2.imwrite(str(folder / "zz_rgba.png"), np.zeros((48, 64, 4), np.uint8))
        with pytest.raises(UserError, match=r"zz_rgba.png: frame has 4 channels, model expects 3"):
            score_images(list_images(folder, role="good"), backend, bundle.manifest.input, allow_mixed=True, progress=False)
        (folder / "zz_broken.png").write_bytes(b"not a png")
        skipped = score_images(list_images(folder, role="good"), backend, bundle.manifest.input, allow_mixed=True, skip_bad=True, progress=False)
        assert skipped.scores.size == 5 and len(skipped.skipped) == 2
    finally:
        backend.close()


def test_crop_is_applied_as_on_the_line(tiny_bundle, tiny_dataset, tmp_path):
    """A 32x32 part pasted into a larger frame and cropped back scores exactly as the part alone."""
    src = list_images(tiny_dataset / "part" / "train" / "good", role="good")[:3]
    folder = tmp_path / "framed"
    folder.mkdir()
    for p in src:
        frame = np.full((60, 80, 3), 17, np.uint8)
        frame[10:42, 20:52] = cv2.imread(str(p))
        cv2.imwrite(str(folder / p.name), frame)
    bundle = load_bundle(tiny_bundle)
    backend = open_backend(bundle)
    try:
        got = score_images(list_images(folder, role="good"), backend, bundle.manifest.input, crop=Roi(20, 10, 32, 32), progress=False)
    finally:
        backend.close()
    np.testing.assert_allclose(got.scores, _ort_scores(tiny_bundle, src), rtol=1e-6, atol=1e-7)


def test_folders_masks_and_pixel_f1(tiny_bundle, tiny_dataset, tmp_path):
    part = tiny_dataset / "part"
    assert find_mask(part / "test" / "dent" / "001.png", part / "ground_truth") == part / "ground_truth" / "dent" / "001_mask.png"
    with pytest.raises(UserError, match="holds a good/ subfolder"):
        fit_folders(tiny_bundle, [part / "train" / "good"], [part / "test"], None, FitOptions(progress=False))
    defects = [part / "test" / k for k in ("dent", "scratch", "spot")]
    result, model_id = fit_folders(
        tiny_bundle, [part / "train" / "good"], defects, part / "ground_truth",
        FitOptions(target_false_reject=0.15, force=True, progress=False),
    )
    assert model_id == load_bundle(tiny_bundle).model_id
    cal = result.calibration
    assert cal.pixel_method == "mask-best-f1" and cal.n_defect == 9 and cal.n_good == 24
    assert 0 <= cal.pixel_threshold <= cal.image_threshold
    only_dent = tmp_path / "masks"
    shutil.copytree(part / "ground_truth" / "dent", only_dent / "dent")
    with pytest.raises(UserError, match=r"no mask for 6 of 9 defect images"):
        fit_folders(tiny_bundle, [part / "train" / "good"], defects, only_dent, FitOptions(target_false_reject=0.15, progress=False))
    flat = tmp_path / "flat"
    shutil.copytree(part / "ground_truth" / "dent", flat)
    with pytest.raises(UserError, match=r"would serve both .*dent/000.png and .*scratch/000.png"):
        fit_folders(tiny_bundle, [part / "train" / "good"], defects, flat, FitOptions(target_false_reject=0.15, progress=False))


def test_empty_and_missing_folders_are_one_line_errors(tiny_bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        fit_folders(tiny_bundle, [tmp_path / "empty"], [], None, FitOptions(progress=False))
    with pytest.raises(UserError, match="does not exist"):
        fit_folders(tiny_bundle, [tmp_path / "nope"], [], None, FitOptions(progress=False))


def test_masks_marking_nothing_and_forced_tail_with_defects(tiny_bundle, tiny_dataset, tmp_path):
    part = tiny_dataset / "part"
    blank = tmp_path / "blank" / "dent"
    blank.mkdir(parents=True)
    for mask in (part / "ground_truth" / "dent").iterdir():
        cv2.imwrite(str(blank / mask.name), np.zeros((32, 32), np.uint8))
    with pytest.raises(UserError, match="mark no defect pixel"):
        fit_folders(tiny_bundle, [part / "train" / "good"], [part / "test" / "dent"], blank.parent, FitOptions(target_false_reject=0.15, force=True, progress=False))
    r = decide(GOOD[:50], DEFECTS, None, FitOptions(force=True), source="synthetic")
    assert r.calibration.method == "recall-at-frr-tail-extrapolation" and r.calibration.escape.trials == 40
