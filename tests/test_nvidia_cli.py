"""`ssae edge build-engine` and `ssae edge fp16-check` as a user runs them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ssae import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_build_engine_without_tensorrt_is_one_line_exit_2(tiny_bundle):
    """A real process, as on a box without the NVIDIA stack: one stderr line naming what to install."""
    out = subprocess.run(
        [sys.executable, "-m", "edge", "build-engine", str(tiny_bundle), "--max-batch", "4"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
    )
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert lines[0].startswith("error: the TensorRT backend needs the tensorrt package")
    assert "pip install" in lines[0] and "pycuda" in lines[0]
    assert not (tiny_bundle / "engines").exists()


def test_build_engine_bad_arguments(tiny_bundle, tmp_path):
    result = runner.invoke(app, ["edge", "build-engine", str(tiny_bundle), "--max-batch", "4", "--opt-batch", "8"])
    assert result.exit_code == 2 and "--opt-batch 8 exceeds --max-batch 4" in result.stderr
    result = runner.invoke(app, ["edge", "build-engine", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    if importlib.util.find_spec("tensorrt") is None:
        assert "error: " in result.stderr and "Traceback" not in result.stderr


def test_fp16_check_cli(tiny_bundle, tiny_dataset, tmp_path):
    import onnx
    import onnxruntime as ort

    from edge.bundle import load_bundle
    from edge.tools.fp16_check import collect_images, compare_fp16, load_frames
    from edge.tools.onnx_fp16 import convert_to_fp16

    # A threshold between an image's FP32 and FP16 score must flip that verdict: exit 1.
    bundle = load_bundle(tiny_bundle)
    images = collect_images([tiny_dataset / "part"])
    frames = load_frames(bundle, images.paths)
    s32 = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"]).run(["score"], {"frames": frames})[0]
    m16, _ = convert_to_fp16(onnx.load(str(bundle.model_path)))
    s16 = ort.InferenceSession(m16.SerializeToString(), providers=["CPUExecutionProvider"]).run(["score"], {"frames": frames})[0]
    worst = int(np.argmax(np.abs(s16 - s32)))
    between = (float(s32[worst]) + float(s16[worst])) / 2
    assert compare_fp16(bundle, frames, threshold=between, threads=1).flips >= 1

    out = tmp_path / "fp16.json"
    result = runner.invoke(app, ["edge", "fp16-check", str(tiny_bundle), str(tiny_dataset / "part"), "--threshold", repr(between), "--threads", "1", "--json", str(out)])
    assert result.exit_code == 1, result.output
    assert "verdict flips" in result.stdout and "FP16 NOT safe" in result.stdout
    saved = json.loads(out.read_text())
    assert saved["flips"] >= 1 and saved["passed"] is False and saved["images"] == 15

    # Far from every score, on unlabelled images: nothing to flip, nothing to rank: exit 0.
    good = tiny_dataset / "part" / "train" / "good"
    result = runner.invoke(app, ["edge", "fp16-check", str(tiny_bundle), str(good), "--threshold", "1000", "--threads", "1", "--keep-fp32", "ReduceMean, Pow"])
    assert result.exit_code == 0, result.output
    assert "FP16 safe on these images" in result.stdout and "ReduceMean, Pow" in result.stdout

    result = runner.invoke(app, ["edge", "fp16-check", str(tiny_bundle), str(tmp_path / "missing")])
    assert result.exit_code == 2 and result.stderr.strip().startswith("error: ") and "does not exist" in result.stderr
