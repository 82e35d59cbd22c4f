"""Recipes and triggers in a real daemon: product changeover between frames over the real control endpoint,
a corrupt recipe refused while the running one stays, and triggers that tag the next frame grabbed."""

from __future__ import annotations

import json
import shutil
import threading
import time

import msgspec
import pytest
import zmq
from typer.testing import CliRunner

from edge.client.control import send_request
from edge.daemon.capture import Capture
from edge.daemon.config import config_from_dict
from edge.daemon.daemon import Daemon
from edge.daemon.triggers import TriggerSlot
from edge.errors import UserError
from edge.files import sha256_file
from edge.manifest import read_manifest, write_manifest
from edge.wire import Health, SelectRecipe, Status, Trigger
from test_edge_daemon import Stream, make_daemon, noise, receive, run_in_thread, subscribe, write_images


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def variant(bundle, dest, doc: str):
    """The same network under another model id: a different doc string in model.onnx, the manifest following."""
    import onnx

    shutil.copytree(bundle, dest)
    model = onnx.load(str(dest / "model.onnx"))
    model.doc_string = doc
    onnx.save(model, str(dest / "model.onnx"))
    write_manifest(dest, msgspec.structs.replace(read_manifest(dest), model_id=sha256_file(dest / "model.onnx")))
    return dest


def corrupt(bundle, dest):
    shutil.copytree(bundle, dest)
    with open(dest / "model.onnx", "r+b") as f:
        f.seek(64)
        f.write(b"\0\0\0\0")
    return dest


def test_recipe_switch_between_frames_names_recipe_and_model_and_refuses_a_corrupt_bundle(tiny_bundle, tmp_path, ctx):
    b = variant(tiny_bundle, tmp_path / "b", "recipe b")
    c = corrupt(tiny_bundle, tmp_path / "c")
    ids = {"a": read_manifest(tiny_bundle).model_id, "b": read_manifest(b).model_id}
    assert ids["a"] != ids["b"]
    folder = write_images(tmp_path / "imgs", {f"{i}.png": noise((32, 32, 3), i) for i in range(3)})
    recipes = [{"name": "a", "bundle": str(tiny_bundle), "image_threshold": 1e6}, {"name": "b", "bundle": str(b), "image_threshold": 0.0}, {"name": "c", "bundle": str(c)}]
    raw = {"cameras": [{"id": "cam", "source": str(folder), "loop": True, "pace_fps": 60}], "recipes": recipes, "recipe": "a", "threads": 1,
           "control": {"endpoint": "tcp://127.0.0.1:*"}, "publish": {"endpoints": ["tcp://127.0.0.1:*"], "heartbeat_s": 0.2, "wait_for_subscriber_s": 10}}  # fmt: skip
    daemon = Daemon(config_from_dict(raw, origin="test"))
    control = daemon.control.endpoints[0]
    sub = subscribe(ctx, daemon.publisher.endpoints[0])
    thread, result = run_in_thread(daemon)
    stream = Stream()

    def until(predicate, timeout_s=10):
        return stream.until(sub, predicate, timeout_s)

    try:
        until(lambda m: not isinstance(m, Health) and m.recipe == "a")
        health = until(lambda m: isinstance(m, Health))
        assert health.recipe == "a" and health.recipes == ["a", "b", "c"]
        switched = send_request(control, SelectRecipe(name="b"), timeout_s=10, ctx=ctx)
        assert switched.ok and switched.recipe == "b" and switched.model_id == ids["b"] and switched.image_threshold == 0.0, switched.message
        until(lambda m: not isinstance(m, Health) and m.recipe == "b")
        refused = send_request(control, SelectRecipe(name="c"), timeout_s=10, ctx=ctx)
        assert not refused.ok and "sha256" in refused.message and "recipe b stays" in refused.message and refused.recipe == "b"
        unknown = send_request(control, SelectRecipe(name="zz"), timeout_s=5, ctx=ctx)
        assert not unknown.ok and "no recipe named 'zz'" in unknown.message and "1=a, 2=b, 3=c" in unknown.message
        frames_before = len(stream.frames["cam"])
        until(lambda m: not isinstance(m, Health) and len(stream.frames["cam"]) > frames_before + 5)
        until(lambda m: isinstance(m, Health) and m.recipe == "b")
        by_number = send_request(control, SelectRecipe(number=1), timeout_s=10, ctx=ctx)
        assert by_number.ok and by_number.recipe == "a"
        until(lambda m: not isinstance(m, Health) and m.recipe == "a")
        again = send_request(control, SelectRecipe(name="a"), timeout_s=5, ctx=ctx)
        assert again.ok and "already active" in again.message
        assert "recipe a (of a, b, c)" in send_request(control, Status(), timeout_s=5, ctx=ctx).message
        # the CLI: a thin client of the same request
        from ssae import app

        ok = CliRunner().invoke(app, ["edge", "recipe", control, "b"])
        assert ok.exit_code == 0 and "recipe b" in ok.output, ok.output
        bad = CliRunner().invoke(app, ["edge", "recipe", control, "c"])
        assert bad.exit_code == 2 and "sha256" in bad.output and "Traceback" not in bad.output
        until(lambda m: not isinstance(m, Health) and m.recipe == "b")
    finally:
        daemon.request_stop()
        thread.join(10)
    assert result["code"] == 0
    frames = stream.frames["cam"]
    assert stream.lost == 0, "no frame lost across the switches and the refusal"
    assert all(f.model_id == ids[f.recipe] for f in frames), "every result names the recipe and the model that judged it"
    assert all(f.verdict == ("ok" if f.recipe == "a" else "defect") for f in frames), "each recipe's thresholds judged its frames"
    order = [f.recipe for f in frames]
    changes = [x for i, x in enumerate(order) if i == 0 or x != order[i - 1]]
    assert changes == ["a", "b", "a", "b"], "one clean switch each time: no frame of the old recipe after the new one"


def test_a_trigger_tags_the_next_frame_grabbed_busy_is_refused_and_a_late_frame_misses(tiny_bundle, tmp_path, ctx):
    folder = write_images(tmp_path / "imgs", {f"{i}.png": noise((32, 32, 3), i) for i in range(2)})
    archive = tmp_path / "archive"
    daemon = make_daemon(tiny_bundle, [{"id": "cam", "source": str(folder), "loop": True, "pace_fps": 4}], control={"endpoint": "tcp://127.0.0.1:*"},
                         publish={"wait_for_subscriber_s": 10}, archive={"dir": str(archive), "quota_mb": 5, "verdicts": ["unknown"]})  # fmt: skip
    control = daemon.control.endpoints[0]
    sub = subscribe(ctx, daemon.publisher.endpoints[0])
    thread, result = run_in_thread(daemon)
    stream = Stream()

    def next_frame(timeout_s=5):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (got := receive(sub, 0.5)) is not None:
                stream.add(*got)
                if not isinstance(got[0], Health):
                    return got[0]
        raise AssertionError("no frame")

    try:
        next_frame()  # just grabbed: the next one is 250 ms away
        sent_ns = time.time_ns()
        armed = send_request(control, Trigger(camera="cam", part_id="P-17", timeout_ms=2000), timeout_s=5, ctx=ctx)
        busy = send_request(control, Trigger(camera="cam", part_id="P-18"), timeout_s=5, ctx=ctx)
        assert armed.ok and armed.trigger_id == 1 and armed.recipe == "default", armed.message
        assert not busy.ok and busy.message.startswith("busy: trigger 1 of camera cam still waits") and busy.trigger_id == 0
        while (tagged := next_frame()).capture_ns < sent_ns:
            assert tagged.trigger_id == 0, "a frame grabbed before the trigger arrived does not answer it"
        assert (tagged.trigger_id, tagged.part_id, tagged.recipe) == (1, "P-17", "default"), "the first frame grabbed after it does"
        later = next_frame()
        assert (later.trigger_id, later.part_id) == (0, "")
        missed = send_request(control, Trigger(camera="cam", part_id="P-19", timeout_ms=20), timeout_s=5, ctx=ctx)  # the next frame comes too late
        assert missed.ok and missed.trigger_id == 2
        assert next_frame().trigger_id == 0
        nobody = send_request(control, Trigger(camera="nope"), timeout_s=5, ctx=ctx)
        assert not nobody.ok and "no camera 'nope'" in nobody.message
        deadline = time.monotonic() + 5
        while not (stream.health and stream.health[-1].cameras[0].triggers_missed):
            assert time.monotonic() < deadline, "the heartbeat never counted the missed trigger"
            next_frame()
        cam = stream.health[-1].cameras[0]
        assert (cam.triggers, cam.triggers_refused, cam.triggers_missed) == (2, 1, 1)
    finally:
        daemon.request_stop()
        thread.join(10)
    assert result["code"] == 0 and stream.lost == 0
    assert [f.part_id for f in stream.frames["cam"] if f.trigger_id] == ["P-17"], "exactly one frame answers the trigger"
    stem = next(p for p in (archive / "cam").glob("*.json") if p.name.endswith(f"-{tagged.seq:09d}.json"))
    record = json.loads(stem.read_text())
    assert record["part_id"] == "P-17" and record["trigger_id"] == 1 and record["recipe"] == "default", "the part id travels into the archive"


def test_a_triggered_frame_is_not_lost_to_the_latest_queue(tmp_path):
    """A `latest` queue drops its oldest frame for a newer one; a trigger on the dropped frame passes to the newer."""
    folder = write_images(tmp_path / "imgs", {f"{i}.png": noise((8, 8, 3), i) for i in range(3)})
    cfg = config_from_dict({"bundle": "b", "cameras": [{"id": "cam", "source": str(folder), "loop": True, "pace_fps": 200, "queue": "latest", "queue_size": 1}]})
    slot = TriggerSlot("cam")
    capture = Capture(cfg.cameras[0], threading.Event(), slot)
    capture.start()
    try:
        deadline = time.monotonic() + 5
        while capture.stats.snapshot().frames_captured < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert slot.arm("P-1", 5000, time.time_ns())[0] == 1
        while capture.stats.snapshot().frames_captured < 40:  # the tagged frame was replaced many times over
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        capture.stop()
        capture.join(5)
    frame = capture.queue.get_nowait()
    assert (frame.trigger_id, frame.part_id) == (1, "P-1") and slot.pending is None


@pytest.mark.parametrize(
    "top, expect",
    [
        ({}, "bundle is missing; add it"),
        ({"bundle": "x", "recipes": [{"name": "a", "bundle": "a"}]}, "bundle and [[recipes]] are both set"),
        ({"recipes": [{"name": "a", "bundle": "a"}], "image_threshold": 1.0}, "set them per recipe"),
        ({"recipes": [{"name": "a", "bundle": "a"}, {"name": "a", "bundle": "b"}]}, "recipes[1].name = 'a' is used twice"),
        ({"recipes": [{"name": "a", "bundle": "a"}], "recipe": "b"}, "recipe = 'b' is not one of the [[recipes]] (a)"),
        ({"recipes": [{"name": "a b", "bundle": "a"}]}, 'recipes[0].name = "a b" is not allowed'),
    ],
)
def test_recipe_config_errors_name_the_field_and_the_fix(top, expect):
    with pytest.raises(UserError) as e:
        config_from_dict({"cameras": [{"id": "c", "source": "0"}], **top}, origin="edge.toml")
    assert expect in str(e.value) and str(e.value).startswith("edge.toml: ")


def test_a_single_bundle_is_one_recipe():
    cfg = config_from_dict({"bundle": "x", "cameras": [{"id": "c", "source": "0"}], "image_threshold": 0.5})
    assert [(r.name, r.bundle, r.image_threshold) for r in cfg.recipe_list] == [("default", "x", 0.5)]
    named = config_from_dict({"bundle": "x", "recipe": "part-7", "cameras": [{"id": "c", "source": "0"}]})
    assert named.start_recipe.name == "part-7"
    listed = config_from_dict({"recipes": [{"name": "a", "bundle": "a"}, {"name": "b", "bundle": "b"}], "recipe": "b", "cameras": [{"id": "c", "source": "0"}]})
    assert listed.start_recipe.bundle == "b" and [r.name for r in listed.recipe_list] == ["a", "b"]


def test_sighup_rereads_the_recipes_and_reloads_the_active_one(tiny_bundle, tmp_path):
    b = variant(tiny_bundle, tmp_path / "b", "b")
    config = tmp_path / "line.toml"
    text = f"""cameras = [{{ id = "cam", source = "0" }}]
threads = 1
recipe = "a"
[publish]
endpoints = ["tcp://127.0.0.1:*"]
[[recipes]]
name = "a"
bundle = "{tiny_bundle}"
[[recipes]]
name = "b"
bundle = "{b}"
image_threshold = 0.5
"""
    config.write_text(text)
    from edge.daemon.config import load_config

    daemon = Daemon(load_config(config), config_path=config)
    try:
        assert daemon.select_recipe("b", 0).ok and daemon.model.thresholds.image == 0.5
        config.write_text(text.replace("image_threshold = 0.5", "image_threshold = 0.7"))
        reply = daemon.reload(reread_config=True)
        assert reply.ok and reply.recipe == "b" and daemon.model.thresholds.image == 0.7 and daemon.model.bundle.model_id == read_manifest(b).model_id
        config.write_text(text.replace('name = "b"', 'name = "b2"'))  # the running recipe vanished from the file
        refused = daemon.reload(reread_config=True)
        assert not refused.ok and "the running recipe 'b' is no longer in the config" in refused.message and daemon.model.recipe == "b"
    finally:
        daemon.shutdown()
