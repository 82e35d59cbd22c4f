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


def _write_typed_defects(root, good_dir, n_lookalike: int = 6, n_noise: int = 14):
    """defects/<type>/: "lookalike" = copies of good images (they score like goods, so all escape), "noise" (scores far above)."""
    looks, noise = root / "defects" / "lookalike", root / "defects" / "noise"
    looks.mkdir(parents=True)
    noise.mkdir()
    for p in sorted(good_dir.glob("*.png"))[:n_lookalike]:
        shutil.copy(p, looks / p.name)
    rng = np.random.default_rng(0)
    for i in range(n_noise):
        cv2.imwrite(str(noise / f"{i:03d}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    return root / "defects"


def test_escapes_per_defect_type_name_the_worst_in_table_report_and_manifest(bundle, tiny_dataset, tmp_path):
    good = tiny_dataset / "part" / "train" / "good"
    defects = _write_typed_defects(tmp_path, good)
    result = _run("fit", bundle, "--good", good, "--defect", defects, "--target-false-reject", "0.15", "--quiet")
    assert result.exit_code == 0, result.stderr
    cal = read_manifest(bundle).calibration
    assert (cal.escape.events, cal.escape.trials) == (6, 20)  # 30 % in total hides a type that always escapes
    by_type = {name: (ev.events, ev.trials) for name, ev in cal.escape_by_type.items()}
    assert by_type == {"lookalike": (6, 6), "noise": (0, 14)}
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "6 of 6 lookalike defects escape (100%)" in rows["lookalike"] and "0 of 14 noise defects escape (0%)" in rows["noise"]
    assert "worst defect type  lookalike" in result.stdout and "6 of 6 escape (100%)" in result.stdout
    assert "warning: defect type lookalike: 6 of 6 escape (100%), against 30% of all defects" in result.stderr
    assert "defect type lookalike: 6 of 6 escape" in cal.note
    report = cv2.imread(str(bundle / "calibration-report.png"))
    assert report.shape[1] == 1900  # three panels: histograms, ROC and the escapes per type (two panels: 1400)
    shown = _run("show", bundle)
    assert "worst defect type  lookalike" in shown.stdout


def test_escapes_per_type_of_folders_given_one_by_one(bundle, tiny_dataset):
    part = tiny_dataset / "part"
    defects = [a for k in ("dent", "scratch", "spot") for a in ("--defect", part / "test" / k)]
    result = _run("fit", bundle, "--good", part / "train" / "good", *defects, "--target-false-reject", "0.15", "--force", "--quiet")
    assert result.exit_code == 0, result.stderr
    cal = read_manifest(bundle).calibration
    assert sorted(cal.escape_by_type) == ["dent", "scratch", "spot"]
    assert sum(ev.events for ev in cal.escape_by_type.values()) == cal.escape.events
    assert all(ev.trials == 3 for ev in cal.escape_by_type.values())


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "{tmp}/nowhere", "--good", "{data}/part/train/good"], "bundle refused: {tmp}/nowhere is not a directory"),
        (["fit", "{tmp}/corrupt", "--good", "{data}/part/train/good"], "manifest.json is not valid JSON"),
        (["live", "tcp://127.0.0.1:1", "--bundle", "{tmp}/nowhere", "--frames", "3000"], "bundle refused: {tmp}/nowhere is not a directory"),
        (["live", "tcp://127.0.0.1:1", "--bundle", "{tmp}/corrupt", "--frames", "3000"], "manifest.json is not valid JSON"),
        (["show", "{tmp}/corrupt"], "manifest.json is not valid JSON"),
        (["apply", "{tmp}/corrupt", "--control", "tcp://127.0.0.1:1"], "manifest.json is not valid JSON"),
        (["fit", "{bundle}", "--good", "{tmp}/empty"], "good folder {tmp}/empty holds no images"),
    ],
)
def test_missing_bundle_corrupt_manifest_and_empty_good_folder_are_one_line(bundle, tiny_dataset, tmp_path, args, message):
    """The bundle is checked first: a wrong path is named, not hidden behind a sample count."""
    shutil.copytree(bundle, tmp_path / "corrupt")
    (tmp_path / "corrupt" / "manifest.json").write_text('{"format_version": 1, "model_id": ')
    (tmp_path / "empty").mkdir()
    fill = {"tmp": tmp_path, "data": tiny_dataset, "bundle": bundle}
    result = _run(*(a.format(**fill) for a in args), "--quiet") if args[0] in ("fit", "live") else _run(*(a.format(**fill) for a in args))
    assert result.exit_code == 2
    assert message.format(**fill) in _error_line(result)


def test_fit_without_scipy_or_matplotlib_says_what_to_install(bundle, tiny_dataset):
    """A box lacking the calibrate packages gets one line naming them and the extra, not a traceback (a real process)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for blocked, missing in ((["scipy"], "needs scipy,"), (["matplotlib"], "needs matplotlib,"), (["scipy", "matplotlib"], "needs scipy and matplotlib,")):
        code = (
            f"import sys\nfor m in {blocked!r}: sys.modules[m] = None  # what a Python without them answers: ImportError\n"
            f"sys.argv = ['ssae', 'calibrate', 'fit', {str(bundle)!r}, '--good', {str(tiny_dataset / 'part' / 'train' / 'good')!r}]\n"
            "from ssae import main\nmain()\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: this command ") and missing in last and "[calibrate]" in last and "Traceback" not in proc.stderr


def test_review_factor_writes_an_uncertain_band_below_the_threshold(bundle, tiny_dataset):
    good = tiny_dataset / "part" / "train" / "good"
    result = _run("fit", bundle, "--good", good, "--target-false-reject", "0.15", "--review-factor", "0.8", "--quiet")
    assert result.exit_code == 0, result.stderr
    cal = read_manifest(bundle).calibration
    assert cal.review_threshold == pytest.approx(0.8 * cal.image_threshold)
    assert "review threshold" in result.stdout and "good samples fall in it" in result.stdout and "review band: 0.8 x" in cal.note
    shown = _run("show", bundle)
    assert "review threshold" in shown.stdout and "is judged review" in shown.stdout
    refused = _run("fit", bundle, "--good", good, "--target-false-reject", "0.15", "--review-factor", "1.2", "--quiet")
    assert refused.exit_code == 2 and read_manifest(bundle).calibration == cal
