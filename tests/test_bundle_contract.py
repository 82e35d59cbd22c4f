"""The bundle contract our users' own ONNX Runtime code relies on."""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest

from edge.bundle import load_bundle
from edge.files import sha256_file
from edge.manifest import BundleError, read_manifest


def test_onnx_io_contract(tiny_bundle):
    sess = ort.InferenceSession(str(tiny_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == [32, 32, 3] and not isinstance(inp.shape[0], int)
    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    amap, score = sess.run(["anomaly_map", "score"], {"frames": frames})
    assert amap.shape == (5, 32, 32) and score.shape == (5,)
    assert (amap >= 0).all()
    np.testing.assert_allclose(score, amap.reshape(5, -1).max(axis=1), rtol=0, atol=0)
    one_map, one_score = sess.run(None, {"frames": frames[2:3]})
    np.testing.assert_allclose(one_map[0], amap[2], atol=1e-6)
    np.testing.assert_allclose(one_score[0], score[2], atol=1e-6)


def test_manifest_carries_model_hash(tiny_bundle):
    manifest = read_manifest(tiny_bundle)
    assert manifest.model_id == sha256_file(tiny_bundle / "model.onnx")
    assert load_bundle(tiny_bundle).manifest == manifest


def test_corrupt_model_refused(tiny_bundle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    with open(bad / "model.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff\xff\xff")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bad)


def test_foreign_or_broken_manifest_refused(tiny_bundle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    text = (bad / "manifest.json").read_text()
    (bad / "manifest.json").write_text(text.replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(BundleError, match="format_version 99"):
        load_bundle(bad)
    (bad / "manifest.json").write_text(text.replace('"format_version": 1', '"format_version": 1, "colour": 3'))
    with pytest.raises(BundleError, match="colour"):
        load_bundle(bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bad)
    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(tmp_path / "nowhere")
    (bad / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(bad)
