"""`ssae train eval` end to end on the tiny dataset and bundle, and its refusals of bad input."""

from __future__ import annotations

import shutil

import cv2
import msgspec
import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from edge.bundle import load_bundle
from edge.errors import UserError
from edge.files import sha256_file
from edge.manifest import read_manifest, write_manifest
from edge.preprocess import fit_frame
from ssae import app
from train.evaluate import EvalResult, evaluate_bundle, resize_mask
from train.metrics import auroc
from train.synthetic import write_dataset
from train.testset import find_testset


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    """A private copy: evaluation writes into the manifest, the session fixture stays untouched."""
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


@pytest.fixture
def data(tiny_dataset, tmp_path):
    return shutil.copytree(tiny_dataset, tmp_path / "data")


def test_evaluate_matches_direct_onnx_runtime(bundle, tiny_dataset):
    result = evaluate_bundle(bundle, tiny_dataset, "part", threads=1, batch=4)
    assert [m.defect for m in result.per_defect] == ["dent", "scratch", "spot"]
    assert all(m.n_good == 6 and m.n_defect == 3 for m in result.per_defect)
    assert (result.overall.n_good, result.overall.n_defect) == (6, 9)
    assert result.has_masks and result.layout == "mvtec" and result.category == "part"
    for m in (*result.per_defect, result.overall):
        for value in (m.image_auroc, m.pixel_auroc, m.aupro, m.best_f1):
            assert 0.0 <= value <= 1.0
        assert m.n_regions >= 1
    # The same numbers from a bare ONNX Runtime session on the same files.
    manifest = read_manifest(bundle)
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    test_dir = tiny_dataset / "part" / "test"
    files = sorted(test_dir.glob("*/*.png"))
    frames = np.stack([fit_frame(cv2.imread(str(f)), manifest.input)[0] for f in files])
    _, scores = sess.run(None, {"frames": frames})
    labels = np.array([f.parent.name != "good" for f in files])
    assert result.overall.image_auroc == pytest.approx(auroc(scores, labels), abs=1e-9)
    assert np.sum(scores > result.overall.best_f1_threshold) == pytest.approx(
        (result.overall.recall * 9) / result.overall.precision
    )


def test_metrics_recorded_in_manifest_atomically(bundle, tiny_dataset):
    before = read_manifest(bundle)
    stale = {"eval.old_defect.image_auroc": 0.1, "train.final_loss": 0.02}
    write_manifest(bundle, msgspec.structs.replace(before, provenance=msgspec.structs.replace(before.provenance, metrics=stale)))
    result = evaluate_bundle(bundle, tiny_dataset, "part")
    after = load_bundle(bundle).manifest  # still verifies: model.onnx untouched
    assert after.model_id == before.model_id == sha256_file(bundle / "model.onnx")
    metrics = after.provenance.metrics
    assert metrics["eval.image_auroc"] == result.overall.image_auroc
    assert metrics["eval.aupro"] == result.overall.aupro
    assert metrics["eval.scratch.pixel_auroc"] == result.per_defect[1].pixel_auroc
    assert metrics["train.final_loss"] == 0.02 and "eval.old_defect.image_auroc" not in metrics
    assert not list(bundle.glob(".manifest.json.*"))  # no temp file left behind
    evaluate_bundle(bundle, tiny_dataset, "part", record=False)
    assert read_manifest(bundle) == after


def test_cli_prints_table_and_writes_json(bundle, tiny_dataset, tmp_path):
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["train", "eval", str(bundle), str(tiny_dataset), "--category", "part", "--json", str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.startswith("overall") for line in lines)
    assert any(line.startswith("scratch") for line in lines)
    decoded = msgspec.json.decode(out.read_bytes(), type=EvalResult)
    assert decoded.overall.n_defect == 9 and decoded.has_masks
    assert f"{decoded.overall.aupro:.3f}" in next(line for line in lines if line.startswith("overall"))


def test_without_ground_truth_reports_image_metrics_only(bundle, data):
    shutil.rmtree(data / "part" / "ground_truth")
    result = evaluate_bundle(bundle, data, "part", record=False)
    assert not result.has_masks
    assert result.overall.pixel_auroc is None and result.overall.aupro is None
    assert 0 <= result.overall.image_auroc <= 1
    cli = CliRunner().invoke(app, ["train", "eval", str(bundle), str(data / "part"), "--no-record"])
    assert cli.exit_code == 0, cli.output
    assert "image-level metrics only" in cli.stdout


def test_plain_folder_layout_and_resized_masks(bundle, tmp_path):
    # 64x64 images into a 32x32 bundle: frames are resized, masks follow with nearest-neighbour.
    base = write_dataset(tmp_path / "src", category="x", size=64, n_train=0, n_test_good=4, n_defect=2, seed=1)
    folder = shutil.copytree(base / "test", tmp_path / "plain")
    shutil.copytree(base / "ground_truth", folder / "ground_truth")
    split = find_testset(folder)
    assert split.layout == "folder" and split.has_masks and split.defect_types == ["dent", "scratch", "spot"]
    result = evaluate_bundle(bundle, folder, record=False)
    assert result.overall.n_good == 4 and result.overall.n_regions >= 4
    mask = np.zeros((64, 64), bool)
    mask[10:20, 30:34] = True
    small = resize_mask(mask, 32, 32)
    assert small.dtype == bool and small.sum() == 10  # 5 rows x 2 columns


def test_missing_category_lists_existing(bundle, tiny_dataset):
    with pytest.raises(UserError, match=r"category 'nope' not found .*categories there: part"):
        evaluate_bundle(bundle, tiny_dataset, "nope")
    result = CliRunner().invoke(app, ["train", "eval", str(bundle), str(tiny_dataset), "--category", "nope"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "categories there: part" in result.stderr and "Traceback" not in result.output


def test_mask_size_mismatch_names_both_paths(bundle, data):
    mask_path = data / "part" / "ground_truth" / "dent" / "001_mask.png"
    cv2.imwrite(str(mask_path), np.zeros((30, 32), np.uint8))
    image_path = data / "part" / "test" / "dent" / "001.png"
    with pytest.raises(UserError) as e:
        evaluate_bundle(bundle, data, "part")
    message = str(e.value)
    assert str(mask_path) in message and str(image_path) in message and "32x30" in message and "re-save the mask" in message
    assert "\n" not in message
    assert "eval.image_auroc" not in read_manifest(bundle).provenance.metrics  # nothing written on error


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda d: (d / "part" / "ground_truth" / "spot" / "002_mask.png").unlink(), r"no mask for .*002\.png"),
        (lambda d: [p.unlink() for p in (d / "part" / "test" / "scratch").iterdir()], r"scratch holds no images"),
        (lambda d: shutil.rmtree(d / "part" / "test" / "good"), r"good is missing"),
        (lambda d: cv2.imwrite(str(d / "part" / "test" / "spot" / "001.png"), np.zeros((40, 32, 3), np.uint8)), r"32x40 with 3 channel"),
        (lambda d: cv2.imwrite(str(d / "part" / "test" / "good" / "003.png"), np.zeros((32, 32), np.uint8)), r"1 channel\(s\) but the other"),
        (lambda d: (d / "part" / "test" / "dent" / "000.png").write_bytes(b"not a png"), r"cannot read image .*000\.png"),
        (lambda d: shutil.copytree(d / "part", d / "other"), r"several categories \(other, part\)"),
        (lambda d: shutil.rmtree(d / "part"), r"neither"),
    ],
)
def test_bad_dataset_is_one_line_error(bundle, data, breakage, expected):
    breakage(data)
    category = None if expected in (r"several categories \(other, part\)", r"neither") else "part"
    with pytest.raises(UserError, match=expected) as e:
        evaluate_bundle(bundle, data, category, record=False)
    assert "\n" not in str(e.value)


def test_missing_paths_and_bad_json_target(bundle, tiny_dataset, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        evaluate_bundle(bundle, tmp_path / "nowhere", "part")
    result = CliRunner().invoke(app, ["train", "eval", str(bundle), str(tiny_dataset), "-c", "part", "--json", str(tmp_path / "no" / "x.json")])
    assert result.exit_code == 2 and "create it" in result.stderr
    result = CliRunner().invoke(app, ["train", "eval", str(tmp_path), str(tiny_dataset), "-c", "part"])
    assert result.exit_code == 2 and "bundle refused" in result.stderr
