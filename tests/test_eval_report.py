"""`ssae train eval --json`: per-image scores as CSV and the contact sheet of the worst cases, beside the JSON."""

from __future__ import annotations

import csv
import shutil

import cv2
import msgspec
import numpy as np
import onnxruntime as ort
from typer.testing import CliRunner

from edge.manifest import read_manifest
from edge.preprocess import fit_frame
from ssae import app
from train.evaluate import EvalResult
from train.report import CSV_FIELDS, TILE_MIN_PX


def test_eval_writes_scores_csv_and_contact_sheet(tiny_bundle, tiny_dataset, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    out = tmp_path / "part.eval.json"
    r = CliRunner().invoke(app, ["train", "eval", str(bundle), str(tiny_dataset), "--category", "part", "--json", str(out), "--threads", "1"])
    assert r.exit_code == 0, r.output
    csv_path, sheet_path = tmp_path / "part.eval.scores.csv", tmp_path / "part.eval.sheet.png"
    assert csv_path.name in r.output and sheet_path.name in r.output
    result = msgspec.json.decode(out.read_bytes(), type=EvalResult)

    rows = list(csv.DictReader(csv_path.open()))
    assert tuple(rows[0]) == CSV_FIELDS
    files = sorted((tiny_dataset / "part" / "test").glob("*/*.png"))
    assert sorted(row["path"] for row in rows) == sorted(str(f) for f in files)
    # The scores are the bundle's own: a bare ONNX Runtime session on the same files gives them.
    manifest = read_manifest(bundle)
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    by_path = {row["path"]: row for row in rows}
    frames = np.stack([fit_frame(cv2.imread(str(f)), manifest.input)[0] for f in files])
    maps, scores = sess.run(None, {"frames": frames})
    for f, s, m in zip(files, scores, maps):
        row = by_path[str(f)]
        assert float(row["score"]) == np.float32(f"{s:.6g}") or abs(float(row["score"]) - s) < 1e-5 * max(1.0, abs(s))
        assert row["defect"] == f.parent.name and row["is_defect"] == str(int(f.parent.name != "good"))
        assert (int(row["peak_y"]), int(row["peak_x"])) == np.unravel_index(int(np.argmax(m)), m.shape)
        mask = tiny_dataset / "part" / "ground_truth" / f.parent.name / f"{f.stem}_mask.png"
        assert int(row["mask_px"]) == (int((cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE) > 0).sum()) if mask.is_file() else 0)
    ranks = sorted(int(row["rank"]) for row in rows)
    assert ranks == list(range(1, len(files) + 1))
    top = min(rows, key=lambda row: int(row["rank"]))
    assert float(top["score"]) == max(float(row["score"]) for row in rows)
    above = sum(int(row["above_best_f1_threshold"]) for row in rows)
    assert above == round(result.overall.recall * result.overall.n_defect / result.overall.precision)

    sheet = cv2.imread(str(sheet_path))
    assert sheet is not None
    # 8 columns of tiles at least TILE_MIN_PX wide; two groups (6 goods, 9 defects: both rows full or padded).
    assert sheet.shape[1] == 8 * TILE_MIN_PX and sheet.shape[0] > 4 * TILE_MIN_PX
    assert sheet.std() > 10  # images and maps, not a blank canvas


def test_no_json_no_report_files(tiny_bundle, tiny_dataset, tmp_path, monkeypatch):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["train", "eval", str(bundle), str(tiny_dataset), "--category", "part", "--no-record"])
    assert r.exit_code == 0, r.output
    assert not list(tmp_path.glob("*.csv")) and not list(tmp_path.glob("*.png"))
