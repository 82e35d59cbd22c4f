"""`ssae calibrate fit` and `show` on the tiny bundle and dataset: what a quality engineer types."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from edge.manifest import read_manifest
from ssae import app

runner = CliRunner()


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    return copy


def _run(*args):
    return runner.invoke(app, ["calibrate", *map(str, args)])


def _error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[-1]


def test_too_few_samples_refused_and_nothing_written(bundle, tiny_dataset):
    raw = (bundle / "manifest.json").read_bytes()
    result = _run("fit", bundle, "--good", tiny_dataset / "part" / "train" / "good", "--quiet")
    assert result.exit_code == 2
    line = _error_line(result)
    assert "24 given, 2995 needed" in line and "--target-false-reject to 0.12" in line
    assert (bundle / "manifest.json").read_bytes() == raw
    assert not (bundle / "calibration-report.png").exists()


def test_fit_good_only_then_with_defects_then_show(bundle, tiny_dataset, tmp_path):
    part = tiny_dataset / "part"
    before = read_manifest(bundle)
    result = _run("fit", bundle, "--good", part / "train" / "good", "--target-false-reject", "0.15", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "image threshold" in result.stdout and "<= " in result.stdout and "Clopper-Pearson" in result.stdout
    first = read_manifest(bundle)
    cal = first.calibration
    # 24 samples at p = 0.15, c = 0.95: 0.85^24 = 0.020 <= 0.05 < P(Bin <= 1) = 0.106, so k = 1: the largest score.
    paths = sorted((part / "train" / "good").glob("*.png"))
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    scores = sess.run(["score"], {"frames": np.stack([cv2.imread(str(p)) for p in paths])})[0]
    assert cal.method == "good-only-order-statistic"
    assert cal.image_threshold == pytest.approx(float(scores.max()), rel=1e-6)
    assert cal.pixel_method == "good-pixel-quantile" and cal.pixel_threshold <= cal.image_threshold
    assert (cal.n_good, cal.target_false_reject, cal.confidence) == (24, 0.15, 0.95)
    assert first.model_id == before.model_id and first.provenance == before.provenance
    png = (bundle / "calibration-report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    report = tmp_path / "out" / "labelled.png"
    defects = [a for k in ("dent", "scratch", "spot") for a in ("--defect", part / "test" / k)]
    result = _run("fit", bundle, "--good", part / "train" / "good", *defects, "--masks", part / "ground_truth",
                  "--target-false-reject", "0.15", "--report", report, "--force", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "escape rate" in result.stdout and report.is_file()
    second = read_manifest(bundle)
    assert second.calibration.method == "recall-at-frr" and second.calibration.pixel_method == "mask-best-f1"
    assert second.calibration.escape.trials == 9 and second.calibration.n_defect == 9
    assert second.history == [*before.history, *([before.calibration] if before.calibration else []), cal]

    shown = _run("show", bundle)
    assert shown.exit_code == 0, shown.stderr
    assert "current calibration" in shown.stdout and "recall-at-frr" in shown.stdout
    assert f"history ({len(second.history)}" in shown.stdout and "good-only-order-statistic" in shown.stdout


def test_results_are_reproducible(bundle, tiny_dataset):
    good = tiny_dataset / "part" / "train" / "good"
    thresholds = []
    for _ in range(2):
        assert _run("fit", bundle, "--good", good, "--target-false-reject", "0.2", "--quiet").exit_code == 0
        cal = read_manifest(bundle).calibration
        thresholds.append((cal.image_threshold, cal.pixel_threshold, cal.good_stats))
    assert thresholds[0] == thresholds[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--good", "{data}/part/test"], "holds no images (.png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp, .pgm, .ppm, .pnm) directly; did you mean"),
        (["--good", "{data}/part/train/good", "--defect", "{data}/part/test"], "holds a good/ subfolder"),
        (["--good", "{data}/nowhere"], "does not exist"),
        (["--good", "{data}/part/train/good", "--crop", "1,2,3"], "is not X,Y,W,H"),
        (["--good", "{data}/part/train/good", "--rule", "magic"], "--rule 'magic' is unknown"),
        (["--good", "{data}/part/train/good", "--masks", "{data}/part/ground_truth"], "--masks needs --defect"),
        (["--good", "{data}/part/train/good", "--target-false-reject", "0.2", "--crop", "0,0,64,64"], "lies outside the 32x32 frame"),
        (["--good", "{data}/part/train/good", "--target-false-reject", "0.2", "--backend", "magic"], "--backend magic: not available here"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(bundle, tiny_dataset, args, message):
    raw = (bundle / "manifest.json").read_bytes()
    result = _run("fit", bundle, *(a.format(data=tiny_dataset) for a in args), "--quiet")
    assert result.exit_code == 2
    assert message in _error_line(result)
    assert (bundle / "manifest.json").read_bytes() == raw


def test_show_and_fit_on_a_folder_that_is_not_a_bundle(tmp_path, tiny_dataset):
    for args in (["show", tmp_path], ["fit", tmp_path, "--good", tiny_dataset / "part" / "train" / "good", "--target-false-reject", "0.2"]):
        result = _run(*args)
        assert result.exit_code == 2 and "manifest.json is missing" in _error_line(result)
