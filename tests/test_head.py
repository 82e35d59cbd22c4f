"""The learned comparator: a valid map, trained end to end, in the same ONNX graph; the recipe switch."""

from __future__ import annotations

from pathlib import Path

import cv2
import msgspec
import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from edge.bundle import load_bundle
from edge.errors import UserError
from ssae import app
from train.batches import Batches
from train.config import TrainConfig, load_config
from train.export import InferenceGraph, run_graph
from train.head import Detector, HeadConfig, SegHead
from train.loop import CKPT_NAME, graph_from_checkpoint, work_dir_for
from train.loss import head_loss, recon_loss
from train.model import FilterAE, ModelConfig
from train.synthetic import make_part, rng_for

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "train"
TINY_MODEL = ModelConfig(widths=(8, 16, 16), bottleneck_blocks=1, dilations=(1, 2), skip_levels=2)
TINY_HEAD = HeadConfig(widths=(8, 16))
TINY = ["--no-progress", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def head_config(tmp_path_factory) -> Path:
    """A tiny head-recipe run whose map mixes head and residual, with the msgms residual: every fused op in play."""
    cfg = tmp_path_factory.mktemp("cfg") / "head.toml"
    cfg.write_text('batch_size = 4\nwarmup_steps = 2\ncheckpoint_every = 3\nresidual = "msgms"\n'
                   "[model]\nwidths = [8, 16, 16]\nbottleneck_blocks = 1\ndilations = [1, 2]\nskip_levels = 2\n"
                   "[head]\nwidths = [8, 16]\nweight = 0.5\n")
    return cfg


@pytest.fixture(scope="module")
def head_bundle(tiny_dataset, head_config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fit") / "head"
    r = CliRunner().invoke(app, ["train", "fit", str(tiny_dataset), "--category", "part", "--out", str(out), "--config", str(head_config),
                                 "--steps", "6", "--recipe", "head", *TINY])
    assert r.exit_code == 0, r.output
    assert "(head 0.0" in r.output  # the head is trained and counted
    return out


def test_fused_graph_map_is_valid_and_onnx_runtime_matches_torch(head_bundle, tiny_dataset):
    graph = graph_from_checkpoint(work_dir_for(head_bundle) / CKPT_NAME)
    assert graph.head is not None and graph.head_weight == 0.5 and graph.residual == "msgms" and graph.residual_ref > 0
    frames = np.stack([cv2.imread(str(p)) for p in sorted((tiny_dataset / "part" / "test").rglob("*.png"))])
    torch_map, torch_score = run_graph(graph, frames)
    sess = ort.InferenceSession(str(head_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    ort_map, ort_score = sess.run(None, {"frames": frames})
    assert ort_map.shape == frames.shape[:3] and ort_score.shape == (len(frames),)
    assert (ort_map >= 0).all() and np.isfinite(ort_map).all()
    np.testing.assert_allclose(ort_map, torch_map, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ort_score, torch_score, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ort_score, ort_map.reshape(len(frames), -1).max(axis=1), atol=0, rtol=0)
    # The head is really in the map: the same weights scored by the residual alone give another map.
    residual_only = InferenceGraph(graph.net, graph.mean.flatten().tolist(), graph.std.flatten().tolist(), 1.0, residual="msgms")
    assert not np.allclose(run_graph(residual_only, frames)[0] / graph.residual_ref * 0.5, torch_map, atol=1e-3)
    m = load_bundle(head_bundle).manifest
    assert m.provenance.recipe == "head" and m.provenance.recipe_config["head"]["enabled"]


def test_head_alone_gives_a_probability_map(head_bundle, tiny_dataset):
    """weight = 1 (the default): the map is the smoothed head probability, in [0, 1]."""
    graph = graph_from_checkpoint(work_dir_for(head_bundle) / CKPT_NAME, weight=1.0)
    frames = np.stack([cv2.imread(str(p)) for p in sorted((tiny_dataset / "part" / "test" / "good").glob("*.png"))])
    amap, score = run_graph(graph, frames)
    assert amap.shape == frames.shape[:3] and (amap >= 0).all() and (amap <= 1).all()
    np.testing.assert_array_equal(score, amap.reshape(len(frames), -1).max(axis=1))


def test_head_learns_where_the_corruption_is():
    """A few dozen steps on tiny parts: the head's probability is higher inside the corruption than outside."""
    torch.manual_seed(0)
    images = np.stack([make_part(32, rng_for(3, i)) for i in range(12)])
    cfg = msgspec.structs.replace(TrainConfig(noise_std=0.0, model=TINY_MODEL, head=TINY_HEAD),
                                  corruption=msgspec.structs.replace(TrainConfig().corruption, p_clean=0.0, opacity_min=0.8))
    batches = Batches(images, np.arange(12), cfg, rank=0, per_rank=8)
    net = Detector(FilterAE(TINY_MODEL), SegHead(TINY_HEAD, 3))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        xin, target, weight, label = batches[step]
        recon, logits = net((xin - 0.5) / 0.25)
        loss = recon_loss(recon, (target - 0.5) / 0.25, weight) + head_loss(logits, label, TINY_HEAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    net.eval()
    inside, outside = [], []
    with torch.no_grad():
        for step in range(100, 104):
            xin, _, _, label = batches[step]
            p = torch.sigmoid(net((xin - 0.5) / 0.25)[1])
            inside.append(float(p[label > 0.5].mean()))
            outside.append(float(p[label == 0].mean()))
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert np.mean(inside) > 2 * np.mean(outside), (inside, outside)


def test_detached_head_leaves_the_filter_untouched():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for detach, reaches in ((True, False), (False, True)):
        net = Detector(FilterAE(TINY_MODEL), SegHead(TINY_HEAD, 3), detach=detach)
        _, logits = net(x)
        logits.mean().backward()
        grad = net.ae.head[0].weight.grad
        assert (grad is not None and bool(grad.abs().sum() > 0)) == reaches


def test_recipe_switch_by_flag_and_by_file():
    default, head, residual = load_config(None, None), load_config(None, "head"), load_config(None, "residual")
    assert residual == load_config(CONFIGS / "residual.toml") and head == load_config(CONFIGS / "head.toml")
    assert head.head.enabled and head.corruption.fill_near > 0 and head.corruption.poisson > 0 and head.recipe == "head"
    for cfg in (default, residual):  # the default is the seed paper's method until the head measures better
        assert not cfg.head.enabled and cfg.corruption.fill_near == 0 and cfg.corruption.poisson == 0 and cfg.residual == "mse"
    assert msgspec.structs.replace(residual, recipe="default") == default
    # Everything else is the same recipe: the comparison measures the head and the near fills alone.
    same = lambda c: {k: v for k, v in msgspec.to_builtins(c).items() if k not in ("recipe", "head", "corruption")}  # noqa: E731
    assert same(default) == same(head)
    for name in ("plain", "denoising"):
        assert not load_config(None, name).head.enabled


def test_head_without_corruption_is_refused(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[corruption]\nenabled = false\n[head]\nenabled = true\n")
    with pytest.raises(UserError, match=r"head.enabled = true needs corruption.enabled"):
        load_config(cfg)
    cfg.write_text("[corruption]\nenabled = false\n[head]\nenabled = false\n")
    assert not load_config(cfg).head.enabled


def test_residual_recipe_exports_the_residual_map(tiny_dataset, tmp_path):
    """--recipe residual: no head in the checkpoint or the graph; the map is the smoothed squared error."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("batch_size = 4\nwarmup_steps = 2\ncheckpoint_every = 3\n[model]\nwidths = [8, 16, 16]\nbottleneck_blocks = 1\n"
                   "dilations = [1, 2]\nskip_levels = 2\n")
    out = tmp_path / "res"
    r = CliRunner().invoke(app, ["train", "fit", str(tiny_dataset), "--category", "part", "--out", str(out), "--config", str(cfg),
                                 "--recipe", "residual", "--steps", "3", *TINY])
    assert r.exit_code == 0, r.output
    assert "head" not in r.output.splitlines()[0]
    state = torch.load(work_dir_for(out) / CKPT_NAME, weights_only=False)
    assert "head" not in state and "residual_ref" not in state
    graph = graph_from_checkpoint(work_dir_for(out) / CKPT_NAME)
    assert graph.head is None
    frames = np.stack([cv2.imread(str(p)) for p in sorted((tiny_dataset / "part" / "test" / "good").glob("*.png"))])
    with torch.no_grad():
        x01, x = graph.normalise(torch.from_numpy(frames))
        mse = ((graph.net(x) * graph.std + graph.mean - x01) ** 2).mean(dim=1)
    amap, _ = run_graph(graph, frames)
    # Smoothing conserves the mean away from the border; the map is the squared error's, not a probability.
    assert float(amap.max()) < 1.0 and abs(float(amap[:, 8:-8, 8:-8].mean()) / float(mse[:, 8:-8, 8:-8].mean()) - 1) < 0.5
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"frames": frames})[0], amap, atol=1e-4, rtol=0)
    assert load_bundle(out).manifest.provenance.recipe == "residual"


def test_default_toml_names_every_key():
    """The code defaults equal default.toml (tests/test_train_config.py); here: it documents every one of them."""
    written = msgspec.toml.decode((CONFIGS / "default.toml").read_bytes())
    code = msgspec.to_builtins(TrainConfig())

    def keys(d: dict, prefix: str = "") -> set[str]:
        return set().union(*(keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k} for k, v in d.items()))

    assert keys(code) - {"image_size"} == keys(written)  # image_size defaults to None, which TOML cannot write
