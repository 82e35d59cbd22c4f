"""FP16 safety check: the FP16 rewrite of the bundle's graph, and the comparison logic on real scores."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge.backends.onnx_trt import cast_input_first
from edge.bundle import load_bundle
from edge.errors import UserError
from edge.tools.fp16_check import check_bundle, collect_images, compare_fp16, judge, load_frames
from edge.tools.onnx_fp16 import convert_to_fp16


def session(model: onnx.ModelProto):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(7).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


def test_fp16_graph_keeps_io_and_stays_close(tiny_bundle, frames):
    model = onnx.load(str(tiny_bundle / "model.onnx"))
    model16, report = convert_to_fp16(model)
    inputs = {i.name: i.type.tensor_type.elem_type for i in model16.graph.input}
    outputs = {o.name: o.type.tensor_type.elem_type for o in model16.graph.output}
    assert inputs == {"frames": onnx.TensorProto.UINT8}
    assert outputs == {"anomaly_map": onnx.TensorProto.FLOAT, "score": onnx.TensorProto.FLOAT}
    floats = [t for t in model16.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert floats and all(t.data_type == onnx.TensorProto.FLOAT16 for t in floats)
    assert report["initializers"] == len(floats) and report["clamped"] == 0
    map32, score32 = session(model).run(None, {"frames": frames})
    map16, score16 = session(model16).run(None, {"frames": frames})
    assert map16.dtype == np.float32 and score16.dtype == np.float32
    np.testing.assert_allclose(score16, score32, rtol=5e-3)
    np.testing.assert_allclose(score16, map16.reshape(len(frames), -1).max(axis=1), rtol=0, atol=0)
    assert not np.array_equal(score16, score32)  # it really ran in lower precision


def test_keep_fp32_ops(tiny_bundle, frames):
    model = onnx.load(str(tiny_bundle / "model.onnx"))
    model16, report = convert_to_fp16(model, keep_fp32_ops=("Conv",))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert report["kept_fp32"] == len(convs) > 0
    conv_weights = {n.input[1] for n in model16.graph.node if n.op_type == "Conv"}
    weights = [t for t in model16.graph.initializer if t.name in conv_weights]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT for t in weights)  # not converted, no cast needed
    score32 = session(model).run(["score"], {"frames": frames})[0]
    score16 = session(model16).run(["score"], {"frames": frames})[0]
    np.testing.assert_allclose(score16, score32, rtol=5e-3)
    with pytest.raises(ValueError, match="subgraph"):
        bad = onnx.ModelProto.FromString(model.SerializeToString())
        branch = onnx.helper.make_graph([], "b", [], [])
        bad.graph.node.append(onnx.helper.make_node("If", ["c"], ["d"], then_branch=branch, else_branch=branch))
        convert_to_fp16(bad)


def test_cast_before_transpose_is_identical(tiny_bundle, frames):
    model = onnx.load(str(tiny_bundle / "model.onnx"))
    swapped, changed = cast_input_first(model, "frames")
    assert changed
    first = [n for n in swapped.graph.node if "frames" in n.input]
    assert [n.op_type for n in first] == ["Cast"]
    for a, b in zip(session(model).run(None, {"frames": frames}), session(swapped).run(None, {"frames": frames})):
        np.testing.assert_array_equal(a, b)
    assert cast_input_first(swapped, "frames")[1] is False  # idempotent


def test_judge_counts_flips_and_auroc_moves():
    s32 = np.array([0.10, 0.20, 0.29, 0.31, 0.50])
    s16 = np.array([0.10, 0.20, 0.31, 0.30, 0.50])  # 0.29 -> 0.31 and 0.31 -> 0.30 cross 0.3
    maps = np.zeros((5, 2, 2))
    r = judge(s32, s16, maps, maps, labels=(0, 0, 0, 1, 1), names=tuple("abcde"), threshold=0.3, threshold_source="given")
    assert r.flips == 2 and r.flipped == ("c", "d") and not r.passed
    assert r.nearest_margin == pytest.approx(0.01) and r.near_threshold == 2  # 0.29 and 0.31 lie within 0.02 of 0.3
    assert r.auroc_fp32 == 1.0 and r.auroc_fp16 == pytest.approx(5 / 6)
    assert "2 verdict(s) flip" in r.verdict and "AUROC moves" in r.verdict
    assert r.score_max_abs_diff == pytest.approx(0.02) and r.score_max_rel_diff == pytest.approx(0.02 / 0.29)
    # At the threshold itself nothing flips: score > threshold is the defect rule.
    same = judge(s32, s32 + 1e-6, maps, maps, labels=None, names=None, threshold=0.7, threshold_source="given")
    assert same.passed and same.flips == 0 and "AUROC was not compared" in same.verdict
    none = judge(s32, s32, maps, maps, labels=(0, 0, 0, 1, 1), names=None, threshold=None, threshold_source="none")
    assert none.passed and none.flips is None and "no threshold" in none.verdict


def test_check_on_tiny_dataset(tiny_bundle, tiny_dataset):
    bundle = load_bundle(tiny_bundle)
    images = collect_images([tiny_dataset / "part"])
    assert images.labels is not None and len(images.paths) == 6 + 3 * 3 and sum(images.labels) == 9
    frames = load_frames(bundle, images.paths)
    result = compare_fp16(bundle, frames, labels=images.labels, threshold=float(np.float32(0.1)), threads=1)
    assert result.images == 15 and result.auroc_fp32 is not None and result.auroc_fp16 is not None
    assert 0 < result.score_max_abs_diff and result.score_max_rel_diff < 0.01
    assert "Conv" in result.ort_fp32_ops  # ONNX Runtime's CPU provider has no FP16 Conv: it is reported
    # Unlabelled folder of images + a threshold from the command line.
    result = check_bundle(bundle, [tiny_dataset / "part" / "train" / "good"], threshold=1e9, threads=1)
    assert result.auroc_fp32 is None and result.flips == 0 and result.passed and result.threshold_source == "given"


def test_bad_inputs(tiny_bundle, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        collect_images([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        collect_images([tmp_path / "empty"])
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read"):
        load_frames(load_bundle(tiny_bundle), (tmp_path / "junk.png",))
