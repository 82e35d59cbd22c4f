"""End to end: train a tiny model for a few steps, export, check ONNX Runtime against torch, evaluate.

Also the bad-input paths of `ssae train fit` (one line, exit 2, nothing overwritten), resume and DDP.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from edge.bundle import load_bundle
from ssae import app
from train.export import run_graph
from train.loop import CKPT_NAME, graph_from_checkpoint, work_dir_for

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--steps", "6", "--no-progress", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tiny_dataset, tiny_config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fit") / "bundle"
    r = CliRunner().invoke(app, ["train", "fit", str(tiny_dataset), "--category", "part", "--out", str(out), "--config", str(tiny_config), *TINY])
    assert r.exit_code == 0, r.output
    return out


def test_fit_exports_a_verified_bundle(trained):
    bundle = load_bundle(trained)
    m = bundle.manifest
    assert (m.input.height_px, m.input.width_px, m.input.channels) == (32, 32, 3)
    assert m.provenance.steps == 6 and m.provenance.category == "part" and m.provenance.recipe == "default"
    assert m.provenance.recipe_config["batch_size"] == 4
    assert m.calibration is not None and m.calibration.image_threshold > 0  # provisional, from the holdout
    assert "model.pt2" in m.extras


def test_onnx_runtime_matches_torch_on_the_same_frames(trained, tiny_dataset):
    graph = graph_from_checkpoint(work_dir_for(trained) / CKPT_NAME)
    frames = np.stack([cv2.imread(str(p)) for p in sorted((tiny_dataset / "part" / "test").rglob("*.png"))])
    torch_map, torch_score = run_graph(graph, frames)
    sess = ort.InferenceSession(str(trained / "model.onnx"), providers=["CPUExecutionProvider"])
    ort_map, ort_score = sess.run(None, {"frames": frames})
    np.testing.assert_allclose(ort_map, torch_map, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ort_score, torch_score, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ort_score, ort_map.reshape(len(frames), -1).max(axis=1), atol=0, rtol=0)


def test_eval_on_the_trained_bundle(trained, tiny_dataset, tmp_path):
    out = tmp_path / "eval.json"
    r = CliRunner().invoke(app, ["train", "eval", str(trained), str(tiny_dataset), "--category", "part", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "aupro" in out.read_text().lower()


def test_resume_continues_and_refuses_another_recipe(trained, tiny_dataset, tiny_config, tmp_path):
    out = tmp_path / "b"
    runner = CliRunner()
    # --device cpu: bit-for-bit equality is a CPU promise (GPU backward kernels use atomics); `trained` too.
    args = ["train", "fit", str(tiny_dataset), "--category", "part", "--out", str(out), "--config", str(tiny_config), "--no-progress", "--threads", "1", "--device", "cpu"]
    assert runner.invoke(app, [*args, "--steps", "3"]).exit_code == 0
    first_id = load_bundle(out).model_id
    r = runner.invoke(app, [*args, "--steps", "6", "--resume"])
    assert r.exit_code == 0, r.output
    assert load_bundle(out).manifest.provenance.steps == 6
    assert re.search(r"^step 6/6 loss [0-9.]+ [0-9.]+ images/s ETA 0\.0 min$", r.output, re.M), r.output  # the log without a bar
    # Resuming 3 -> 6 lands on the same weights as training 6 straight (same seed; each batch is seeded by its step).
    assert load_bundle(out).model_id == load_bundle(trained).model_id != first_id
    r = runner.invoke(app, [*args, "--steps", "9", "--resume", "--recipe", "plain"])
    assert r.exit_code == 2 and "another recipe" in r.output and "corruption" in r.output
    assert load_bundle(out).manifest.provenance.steps == 6  # nothing overwritten


def test_weight_average_is_exported_and_resumes(tiny_dataset, tiny_config, tmp_path):
    """ema_decay > 0: the bundle ships the averaged weights (not the last step's), and resume carries the average."""
    cfg = tmp_path / "ema.toml"
    cfg.write_text("ema_decay = 0.9\n" + tiny_config.read_text())
    args = ["train", "fit", str(tiny_dataset), "--category", "part", "--config", str(cfg), "--no-progress", "--threads", "1", "--device", "cpu"]
    runner = CliRunner()
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "straight"), "--steps", "6"]).exit_code == 0
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "resumed"), "--steps", "3"]).exit_code == 0
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "resumed"), "--steps", "6", "--resume"])
    assert r.exit_code == 0, r.output
    straight = load_bundle(tmp_path / "straight")
    assert load_bundle(tmp_path / "resumed").model_id == straight.model_id
    state = torch.load(work_dir_for(tmp_path / "straight") / CKPT_NAME, weights_only=False)
    assert any(not (state["ema"][k] == v).all() for k, v in state["model"].items())  # the two weight sets differ
    frames = np.stack([cv2.imread(str(p)) for p in sorted((tiny_dataset / "part" / "test").rglob("*.png"))])
    _, torch_score = run_graph(graph_from_checkpoint(work_dir_for(tmp_path / "straight") / CKPT_NAME), frames)
    sess = ort.InferenceSession(str(tmp_path / "straight" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"frames": frames})[1], torch_score, atol=1e-4, rtol=0)


def test_batch_workers_give_the_same_bundle(trained, tiny_dataset, tiny_config, tmp_path):
    """Two worker processes make the batches ahead: same stream, so the same weights as making them in-process."""
    out = tmp_path / "w"
    r = CliRunner().invoke(app, ["train", "fit", str(tiny_dataset), "--category", "part", "--out", str(out), "--config", str(tiny_config), *TINY, "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert "batch workers 2" in r.output
    assert load_bundle(out).model_id == load_bundle(trained).model_id


def test_fit_on_the_gpu_or_a_clear_refusal(tiny_dataset, tiny_config, tmp_path):
    """--device cuda trains there (worker processes make the batches); without CUDA it is a one-line refusal."""
    import torch

    out = tmp_path / "gpu"
    tiny = [a for a in TINY if a not in ("--device", "cpu")]
    r = CliRunner().invoke(app, ["train", "fit", str(tiny_dataset), "--category", "part", "--out", str(out), "--config", str(tiny_config), *tiny, "--device", "cuda", "--workers", "2"])
    if torch.cuda.is_available():
        assert r.exit_code == 0, r.output
        assert "on cuda:0, batch workers 2" in r.output
        assert load_bundle(out).manifest.provenance.steps == 6
    else:
        assert r.exit_code == 2 and "sees no CUDA GPU" in r.output and "--device auto or cpu" in r.output
        assert not out.exists()


def test_auto_workers_feed_a_gpu_and_leave_cpu_cores_to_the_model():
    from train.batches import resolve_workers

    assert resolve_workers(-1, on_gpu=False, world=1) == 0
    assert resolve_workers(3, on_gpu=False, world=1) == 3
    cores = os.cpu_count() or 1
    assert resolve_workers(-1, on_gpu=True, world=1) == max(0, min(8, cores - 1))
    assert resolve_workers(-1, on_gpu=True, world=cores) == 0


@pytest.mark.parametrize("case", ["missing", "empty", "mixed", "category", "config"])
def test_bad_input_is_one_line_and_overwrites_nothing(case, tiny_dataset, trained, tmp_path):
    data, extra = tmp_path / "data", []
    if case == "missing":
        data = tmp_path / "nowhere"
    elif case == "empty":
        data.mkdir()
    elif case == "mixed":
        shutil.copytree(tiny_dataset / "part" / "train" / "good", data)
        cv2.imwrite(str(data / "zz_big.png"), np.zeros((40, 40, 3), np.uint8))
    elif case == "category":
        data, extra = tiny_dataset, ["--category", "bolts"]
    elif case == "config":
        data, extra = tiny_dataset, ["--category", "part", "--config", str(tmp_path / "c.toml")]
        (tmp_path / "c.toml").write_text("[model]\nwidth = 3\n")
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    before = (out / "manifest.json").read_bytes()
    r = CliRunner().invoke(app, ["train", "fit", str(data), "--out", str(out), *extra, *TINY])
    assert r.exit_code == 2, r.output
    message = r.output.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("error:"), r.output
    expected = {"missing": "does not exist", "empty": "no images", "mixed": "zz_big.png", "category": "categories found: part", "config": "unknown field `width` - at `$.model`"}
    assert expected[case] in message[0]
    assert (out / "manifest.json").read_bytes() == before


def test_ddp_two_cpu_processes(tiny_dataset, tiny_config, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU ranks on gloo, also on a GPU box
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train", "fit", str(tiny_dataset),
           "--category", "part", "--out", str(out), "--config", str(tiny_config), *TINY]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert load_bundle(out).manifest.provenance.steps == 6


# SIGINT/SIGTERM to a real `ssae train fit` process: tests/test_train_safety.py
