"""The daemon config: the shipped examples load, and every mistake names file, field, value and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.daemon.config import DaemonConfig, load_config
from edge.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
GOOD = """
bundle = "b"
[[cameras]]
id = "cam0"
source = "video.avi"
"""


def test_shipped_configs_load():
    demo = load_config(ROOT / "configs/edge/demo.toml")
    assert demo.bundle == "demo-run/bundle" and demo.cameras[0].source == "demo-run/parts.avi"
    assert demo.cameras[0].queue == "all" and not demo.cameras[0].loop
    line = load_config(ROOT / "configs/edge/line.example.toml")
    assert len(line.cameras) == 3 and line.archive is not None and line.metrics.port == 9108
    assert line.cameras[0].crop is not None and line.cameras[0].crop.w == 1280
    # The examples run as the defaults do on a small CPU box (issue 22): every usable core, no spinning, small
    # batches, no wait for a fuller one, and the mask that costs no CPU.
    for cfg in (demo, line):
        assert (cfg.threads, cfg.spin, cfg.max_batch, cfg.batch_wait_ms, cfg.publish.mask) == (0, False, 4, 0.0, "raw")


def test_minimal_config_gets_documented_defaults(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text(GOOD)
    cfg = load_config(path)
    assert isinstance(cfg, DaemonConfig)
    assert cfg.cameras[0].queue is None and cfg.cameras[0].policy == "all" and cfg.publish.endpoints == ["tcp://127.0.0.1:5555"]
    assert cfg.control is None and cfg.archive is None and cfg.metrics.port is None and not cfg.security.curve


def test_inference_defaults_suit_a_small_shared_cpu_box(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text(GOOD)
    cfg = load_config(path)
    assert cfg.threads == 0 and cfg.spin is False  # every usable core, idle threads sleep instead of spinning
    assert cfg.max_batch == 4 and cfg.batch_wait_ms == 0.0 and cfg.publish.mask == "raw"


@pytest.mark.parametrize(
    "top, max_batch",
    [("", 4), ('backend = "tensorrt"\n', 8), ('backend = "torch-cuda"\n', 8), ("max_batch = 2\n", 2), ('backend = "tensorrt"\nmax_batch = 16\n', 16)],
)
def test_max_batch_default_follows_the_backend_and_a_set_value_wins(tmp_path, top, max_batch):
    path = tmp_path / "edge.toml"
    path.write_text(top + GOOD)
    assert load_config(path).max_batch == max_batch


def test_spin_is_a_boolean_for_onnxruntime_only(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text("spin = true\n" + GOOD)
    assert load_config(path).spin is True
    for text, expected in [
        ('spin = "yes"\n' + GOOD, 'spin = "yes" is a quoted string; write a true/false'),
        ('backend = "tensorrt"\nspin = true\n' + GOOD, 'spin = true applies to backend = "onnxruntime"'),
    ]:
        path.write_text(text)
        with pytest.raises(UserError) as e:
            load_config(path)
        assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "source, extra, policy",
    [
        ("parts.avi", "", "all"),  # a recording: every frame counts
        ("imgs/", "", "all"),
        ("0", "", "latest"),  # live: the freshest frame wins
        ("/dev/video2", "", "latest"),
        ("rtsp://cam/stream", "", "latest"),
        ("http://cam/mjpg", "", "latest"),
        ("videotestsrc ! appsink", 'capture_api = "gstreamer"\n', "latest"),
        ("parts.avi", 'queue = "latest"\n', "latest"),  # set explicitly: honoured
        ("0", 'queue = "all"\n', "all"),
    ],
)
def test_queue_policy_defaults_to_the_source_kind_and_an_explicit_one_is_kept(tmp_path, source, extra, policy):
    path = tmp_path / "edge.toml"
    path.write_text(f'bundle = "b"\n[[cameras]]\nid = "c"\nsource = "{source}"\n{extra}')
    assert load_config(path).cameras[0].policy == policy


@pytest.mark.parametrize(
    "extra, expected",
    [
        ("queue_size = 0", "cameras[0].queue_size = 0 is below 1; set 1 or more"),
        ('queue = "some"', "cameras[0].queue = \"some\" is not one of 'latest', 'all'"),
        ("queue_size = \"4\"", "cameras[0].queue_size = \"4\" is a quoted string; write a whole number"),
        ("queue_sise = 4", "cameras[0].queue_sise is not a known key; remove it or fix the spelling (did you mean 'queue_size'?)"),
        ("crop = { w = 0, h = 10 }", "cameras[0].crop.w = 0 is below 1; set 1 or more"),
        ("crop = { x = 1, h = 10 }", "cameras[0].crop.w is missing; add it"),
        ("backoff_initial_s = 60.0", "cameras[0]: backoff_initial_s = 60.0 exceeds backoff_max_s = 30.0"),
        ("props = { frame_width = 640 }", "props key 'frame_width' is not an OpenCV property name; write it like FRAME_WIDTH"),
    ],
)
def test_camera_mistakes_name_field_value_and_fix(tmp_path, extra, expected):
    path = tmp_path / "edge.toml"
    path.write_text(GOOD + extra + "\n")
    with pytest.raises(UserError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: ")
    assert expected in str(e.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ('bundle = "b"\ncameras = []\n', "cameras = [] is empty; list at least 1"),
        ('[[cameras]]\nid = "c"\nsource = "s"\n', "bundle is missing; add it"),
        (GOOD + '[[cameras]]\nid = "cam0"\nsource = "other.avi"\n', "cameras[1].id = 'cam0' is used twice"),
        (GOOD.replace('"cam0"', '"Cam 0"'), "cameras[0].id = \"Cam 0\" is not allowed; use lower-case letters, digits"),
        (GOOD + '[publish]\nendpoints = ["localhost:5555"]\n', "endpoints[0] = 'localhost:5555' is not a ZeroMQ endpoint; write it like tcp://"),
        (GOOD + "[publsh]\nheartbeat_s = 1\n", "publsh is not a known key; remove it or fix the spelling (did you mean 'publish'?)"),
        (GOOD + "[publish]\nheartbeat_s = 0\n", "publish.heartbeat_s = 0 is below 0.05; set 0.05 or more"),
        (GOOD + "[metrics]\nport = 70000\n", "metrics.port = 70000 is above 65535; set 65535 or less"),
        (GOOD + '[archive]\ndir = "a"\nquota_mb = 10\nverdicts = ["bad"]\n', "archive.verdicts[0] = \"bad\" is not one of 'defect', 'review', 'unknown', 'ok'"),
        (GOOD + '[control]\nendpoint = "tcp://127.0.0.1:5555"\n', "control.endpoint = 'tcp://127.0.0.1:5555' is also a publish endpoint"),
        ("max_batch = 1.5\n" + GOOD, "max_batch = 1.5 is a number; write a whole number"),
        (GOOD + "max_batch = 8\n", "cameras[0].max_batch is not a known key"),  # TOML: keys after [[cameras]] belong to the camera
        (GOOD + '[security]\ncurve = true\n', "security.curve = true needs security.server_secret_key"),
        (GOOD + '[control]\nendpoint = "tcp://0.0.0.0:5556"\n', "would let anyone on the network reload the model; bind it to 127.0.0.1"),
        ("bundle = \n", "not valid TOML"),
    ],
)
def test_daemon_mistakes_name_field_value_and_fix(tmp_path, text, expected):
    path = tmp_path / "edge.toml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_config(path)
    assert expected in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_missing_or_folder_config_refused(tmp_path):
    with pytest.raises(UserError, match="no such config file; copy configs/edge/line.example.toml"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(UserError, match="is a folder; pass the config file"):
        load_config(tmp_path)
