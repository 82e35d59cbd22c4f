"""Writing a calibration: history kept, model untouched, and a crash mid-write leaves the old manifest intact."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from calibrate.store import store_calibration
from edge.bundle import load_bundle
from edge.errors import UserError
from edge.manifest import Calibration, read_manifest


def _cal(threshold: float) -> Calibration:
    return Calibration(image_threshold=threshold, pixel_threshold=threshold / 2, method="good-only-order-statistic", n_good=3000)


@pytest.fixture
def bundle(tiny_bundle, tmp_path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    return copy


def test_history_grows_and_the_model_is_untouched(bundle):
    before = read_manifest(bundle)
    store_calibration(bundle, _cal(1.0), model_id=before.model_id)
    store_calibration(bundle, _cal(2.0), model_id=before.model_id)
    after = read_manifest(bundle)
    assert after.calibration == _cal(2.0)
    assert after.history == [*before.history, *([before.calibration] if before.calibration else []), _cal(1.0)]
    assert (after.model_id, after.input, after.provenance) == (before.model_id, before.input, before.provenance)
    load_bundle(bundle)  # still verifies: model.onnx untouched


def test_a_swapped_bundle_is_not_written(bundle):
    raw = (bundle / "manifest.json").read_bytes()
    with pytest.raises(UserError, match="bundle changed while calibrating"):
        store_calibration(bundle, _cal(1.0), model_id="0" * 64)
    assert (bundle / "manifest.json").read_bytes() == raw


def test_failing_rename_leaves_the_old_manifest_and_no_temp_file(bundle, monkeypatch):
    model_id = read_manifest(bundle).model_id
    store_calibration(bundle, _cal(1.0), model_id=model_id)
    raw = (bundle / "manifest.json").read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        store_calibration(bundle, _cal(2.0), model_id=model_id)
    monkeypatch.undo()
    assert (bundle / "manifest.json").read_bytes() == raw
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json", "model.onnx"]


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from calibrate.store import store_calibration
    from edge.manifest import Calibration, read_manifest

    bundle = Path(sys.argv[1])
    model_id = read_manifest(bundle).model_id
    print("ready", flush=True)
    i = 0
    while True:  # rewrite the manifest as fast as possible until killed
        i += 1
        store_calibration(bundle, Calibration(image_threshold=float(i), pixel_threshold=0.0, method="stress", note="x" * 4000), model_id=model_id)
    """
)


def test_killed_writer_leaves_a_whole_manifest(bundle):
    """SIGKILL a process that rewrites the manifest in a loop: what is left always decodes and verifies."""
    root = Path(__file__).resolve().parents[1]
    for delay_s in (0.05, 0.2, 0.35):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(bundle)], cwd=root, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(delay_s)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            proc.stdout.close()
        read_manifest(bundle)  # raises if half-written
        load_bundle(bundle)
    assert read_manifest(bundle).calibration.method == "stress"


def test_a_manifest_written_before_escape_by_type_still_reads():
    """demo/bundle's manifest predates the per-type escapes: the new field defaults, nothing is refused."""
    demo = Path(__file__).resolve().parents[1] / "demo" / "bundle"
    assert "escape_by_type" not in (demo / "manifest.json").read_text()
    assert read_manifest(demo).calibration.escape_by_type == {}
