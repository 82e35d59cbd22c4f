"""`ssae edge demo` end to end at toy size: real daemon process, real video, real tap; accounting checked."""

from __future__ import annotations

import json

import msgspec
import tomllib

from edge.tools.demo import TINY, DemoOptions, run_demo, to_toml


def test_demo_with_a_given_bundle_accounts_for_every_part(tiny_bundle, tmp_path):
    lines, warnings = [], []
    opts = msgspec.structs.replace(TINY, frames=12)
    summary = run_demo(tmp_path / "work", opts, bundle=tiny_bundle, emit=lines.append, warn=warnings.append, progress=False)
    truth = json.loads((tmp_path / "work" / "ground_truth.json").read_text())
    assert len(truth) == 12 and summary.frames_sent == 12
    assert summary.frames_received == 12 and summary.lost == 0 and summary.dropped == 0 and summary.daemon_exit == 0
    assert summary.planted == sum(t["defect"] is not None for t in truth) == 3
    assert summary.found + summary.missed == summary.planted
    assert summary.fps > 0
    frame_lines = [line for line in lines if line.startswith("parts seq=")]
    assert len(frame_lines) == 12
    assert sum("planted" in line for line in frame_lines) == 3
    manifest = json.loads((tmp_path / "work" / "bundle" / "manifest.json").read_text())
    assert manifest["calibration"]["n_good"] == opts.calib_good  # calibrated by the calibrate package
    assert json.loads((tiny_bundle / "manifest.json").read_text())["calibration"] is None  # the original is untouched


def test_to_toml_round_trips_a_daemon_config():
    from edge.daemon.config import config_from_dict

    raw = {"bundle": "b", "name": "demo", "cameras": [{"id": "parts", "source": "v.avi", "props": {"FPS": 30.0}, "crop": {"w": 8, "h": 8}}],
           "publish": {"endpoints": ["tcp://127.0.0.1:1"]}}
    cfg = config_from_dict(raw)
    assert config_from_dict(tomllib.loads(to_toml(msgspec.to_builtins(cfg)))) == cfg


def test_default_options_need_no_training_config_surprises():
    from calibrate.fit import FitOptions
    from calibrate.rules import min_good_samples
    from train.config import load_config

    opts = DemoOptions()
    assert opts.size_px % 16 == 0  # the model's input side must divide by 16
    # the demo's calibration set is large enough for its own false-reject target (the rule would refuse it otherwise)
    assert opts.calib_good >= min_good_samples(opts.target_false_reject, FitOptions().confidence)
    # the demo's model settings make a valid training config (what `ssae edge demo --train` builds)
    model = {"widths": list(opts.widths), "bottleneck_blocks": opts.bottleneck_blocks, "dilations": list(opts.dilations), "skip_levels": opts.skip_levels}
    load_config(None, None, steps=opts.train_steps, model=model)


def test_shipped_demo_bundle_loads_and_finds_planted_defects(tmp_path):
    from edge.bundle import load_bundle
    from edge.tools.demo import SHIPPED_BUNDLE

    bundle = load_bundle(SHIPPED_BUNDLE)  # hash and format checked: a stale shipped model fails here first
    assert (bundle.manifest.input.height_px, bundle.manifest.input.width_px) == (64, 64)
    opts = DemoOptions(frames=24, calib_good=150, calib_defect=15)
    summary = run_demo(tmp_path / "work", opts, emit=lambda line: None, warn=lambda line: None, progress=False)
    assert summary.frames_received == 24 and summary.lost == 0 and summary.planted == 6
    assert summary.found >= 4 and summary.false_alarms <= 1, summary
    assert "shipped" in summary.model
