"""`ssae train fit` loses nothing: --out is never someone's folder or the data, a site calibration survives a
retrain only in history and only with --force, and SIGINT/SIGTERM leave a checkpoint that --resume finishes.

Real files, real `ssae` invocations (CliRunner), real signals to real processes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edge.bundle import load_bundle
from edge.manifest import read_manifest
from ssae import app
from train.loop import CKPT_NAME, work_dir_for

PROVISIONAL_SOURCE = "training holdout"  # Calibration.source of the threshold train fit sets (train/out_folder.py)

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--steps", "6", "--no-progress", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def good(tiny_dataset, tmp_path_factory) -> Path:
    """A plain folder of good training images."""
    folder = tmp_path_factory.mktemp("plain") / "good"
    shutil.copytree(tiny_dataset / "part" / "train" / "good", folder)
    return folder


@pytest.fixture(scope="module")
def trained(good, tiny_config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fit") / "bundle"
    r = fit(good, out, tiny_config)
    assert r.exit_code == 0, r.output
    return out


def fit(data: Path, out: Path, config: Path, *extra: str):
    return CliRunner().invoke(app, ["train", "fit", str(data), "--out", str(out), "--config", str(config), *TINY, *extra])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under folder (hidden ones too) -> sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(r) -> str:
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.output
    return lines[0]


# --- --out: absent, empty or an ssae bundle; never the data -------------------------------------------


def test_out_holding_other_files_is_refused_and_untouched_then_an_empty_folder_is_accepted(good, tiny_config, tmp_path):
    out = tmp_path / "reports"
    (out / "2023").mkdir(parents=True)
    (out / "summary.xlsx").write_bytes(b"someone's spreadsheet")
    (out / "2023" / "q4.pdf").write_bytes(b"%PDF-1.4 ...")
    before = snapshot(tmp_path)
    line = one_error_line(fit(good, out, tiny_config))
    assert str(out) in line and "not an ssae bundle" in line and "new or empty folder" in line
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["reports"]  # no OUT.work either
    shutil.rmtree(out)
    out.mkdir()
    r = fit(good, out, tiny_config)
    assert r.exit_code == 0, r.output
    assert load_bundle(out).manifest.provenance.steps == 6


@pytest.mark.parametrize("where", ["the data", "inside the data", "above the data", "work folder is the data"])
def test_out_is_never_the_data_inside_it_or_above_it(where, good, tiny_config, tmp_path):
    data = tmp_path / "site" / ("b.work" if where == "work folder is the data" else "good")
    shutil.copytree(good, data)
    out = {"the data": data, "inside the data": data / "bundle", "above the data": tmp_path / "site",
           "work folder is the data": tmp_path / "site" / "b"}[where]
    before = snapshot(tmp_path)
    line = one_error_line(fit(data, out, tiny_config))
    assert str(out if where != "work folder is the data" else data) in line and "training data" in line, line
    assert "pass an --out outside it" in line or "pass an --out beside it" in line, line
    assert snapshot(tmp_path) == before  # every image still there, nothing new


@pytest.mark.parametrize("case", ["out is a file", "manifest not ours", "work is a file", "foreign checkpoint"])
def test_other_things_where_the_bundle_or_checkpoint_goes_are_refused_untouched(case, good, tiny_config, tmp_path):
    out, work = tmp_path / "b", work_dir_for(tmp_path / "b")
    if case == "out is a file":
        out.write_text("a file named like the bundle\n")
    elif case == "manifest not ours":
        out.mkdir()
        (out / "manifest.json").write_text('{"name": "my web app", "version": "1.0"}\n')
        (out / "index.html").write_text("<html></html>\n")
    elif case == "work is a file":
        work.write_text("a file named like the checkpoint folder\n")
    else:
        work.mkdir()
        (work / CKPT_NAME).write_text("my own notes, not a checkpoint\n")
    before = snapshot(tmp_path)
    line = one_error_line(fit(good, out, tiny_config))
    expected = {"out is a file": f"--out {out} is a file", "manifest not ours": f"--out {out} is not a bundle this ssae can replace",
                "work is a file": f"{work} is a file", "foreign checkpoint": f"{work / CKPT_NAME} is not a checkpoint ssae wrote"}
    assert expected[case] in line, line
    assert snapshot(tmp_path) == before and sorted(tmp_path.iterdir()) == sorted(p for p in (out, work) if p.exists())


def test_retraining_replaces_only_what_ssae_wrote_and_keeps_the_users_files(trained, good, tiny_config, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(trained, out)
    (out / "notes.txt").write_text("line 3, camera above the conveyor\n")
    (out / "photos").mkdir()
    (out / "photos" / "setup.jpg").write_bytes(b"\xff\xd8 a photo")
    (out / "engines").mkdir()
    (out / "engines" / "README").write_text("plans built on the Orin\n")
    (out / "engines" / "orin-fp16.plan").write_bytes(b"a TensorRT plan for the old model")  # ssae's: stale with a new model
    (out / "engines" / "orin-fp16.json").write_text("{}")
    (out / ".manifest.json.x1y2.tmp").write_text("{")  # an interrupted atomic write of ours
    users = {k: v for k, v in snapshot(out).items() if k in ("notes.txt", "photos/setup.jpg", "engines/README")}
    inode = (out / "notes.txt").stat().st_ino
    old_id = load_bundle(out).model_id
    r = fit(good, out, tiny_config, "--seed", "1")
    assert r.exit_code == 0, r.output
    assert load_bundle(out).model_id != old_id
    after = snapshot(out)
    assert {k: after.get(k) for k in users} == users and (out / "notes.txt").stat().st_ino == inode  # the same files, not copies
    assert not (out / "engines" / "orin-fp16.plan").exists() and not (out / "engines" / "orin-fp16.json").exists()
    assert not (out / ".manifest.json.x1y2.tmp").exists()
    assert "kept 3 file(s) of yours" in r.output and "notes.txt" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.work"]  # no hidden swap folders left behind


# --- a site calibration is replaced only with --force, and kept in history -----------------------------


def test_retraining_a_site_calibrated_bundle_needs_force_and_keeps_its_calibration(trained, good, tiny_config, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(trained, out)
    r = CliRunner().invoke(app, ["calibrate", "fit", str(out), "--good", str(good), "--target-false-reject", "0.2", "--quiet", "--threads", "1"])
    assert r.exit_code == 0, r.output
    site = read_manifest(out)
    assert site.calibration.source != PROVISIONAL_SOURCE and (out / "calibration-report.png").is_file()
    before = snapshot(tmp_path)

    line = one_error_line(fit(good, out, tiny_config))
    assert "calibrated on site" in line and "--force" in line and str(out) in line
    assert snapshot(tmp_path) == before

    r = fit(good, out, tiny_config, "--force")
    assert r.exit_code == 0, r.output
    new = read_manifest(out)
    assert new.model_id != site.model_id or new.provenance.created != site.provenance.created
    assert new.calibration.source == PROVISIONAL_SOURCE  # the new model's own, provisional threshold
    assert [c.source for c in new.history] == [c.source for c in site.history] + [site.calibration.source]
    kept = new.history[-1]
    assert kept.image_threshold == site.calibration.image_threshold and kept.created == site.calibration.created
    assert site.model_id[:12] in kept.note  # the entry says which model it was fitted for
    report = out / f"calibration-report-{site.model_id[:12]}.png"
    assert snapshot(out)[report.name] == before["b/calibration-report.png"] and not (out / "calibration-report.png").exists()
    assert "kept in the manifest history" in r.output and report.name in r.output


def test_the_demo_retrains_its_own_calibrated_bundle(good, tmp_path):
    """Regression guard: the demo's cached bundle is calibrated on site, and new options retrain it."""
    import msgspec

    from calibrate.store import store_calibration
    from edge.tools.demo import obtain_bundle
    from edge.tools.demo_parts import TINY
    from edge.manifest import Calibration

    bundle, _ = obtain_bundle(TINY, tmp_path, good, source="train", emit=lambda line: None, progress=False)
    store_calibration(bundle, Calibration(image_threshold=0.1, pixel_threshold=0.1, method="order-statistic", source=str(good)),
                      model_id=read_manifest(bundle).model_id)
    again, how = obtain_bundle(msgspec.structs.replace(TINY, seed=1), tmp_path, good, source="train", emit=lambda line: None, progress=False)
    assert again == bundle and how.startswith("trained here")
    assert read_manifest(bundle).provenance.seed == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_daemon_says_at_start_that_the_calibration_is_provisional(trained, good, tmp_path):
    r = subprocess.run([sys.executable, "-m", "edge", "run", "--bundle", str(trained), "--source", str(good), "--policy", "all",
                        "--publish", f"tcp://127.0.0.1:{free_port()}", "--threads", "1"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    warning = [ln for ln in r.stderr.splitlines() if "provisional" in ln]
    assert warning and "ssae calibrate fit" in warning[0], r.stderr


# --- SIGINT / SIGTERM: a checkpoint at the step reached, an honest message, --resume finishes ------------


@pytest.mark.parametrize("sig, first_checkpoint", [
    pytest.param(s, when, id=f"{s.name}-{when.replace(' ', '-')}")
    for s in (signal.SIGINT, signal.SIGTERM) for when in ("passed", "not yet")
])
def test_a_stop_signal_saves_the_step_reached_and_resume_finishes(sig, first_checkpoint, tiny_dataset, tiny_config, tmp_path):
    """A real signal to a real `ssae train fit` process, after periodic checkpoints or before the first one."""
    out = tmp_path / "b"
    cfg = tiny_config
    if first_checkpoint == "not yet":  # no periodic checkpoint at all: the signal comes before the first
        cfg = tmp_path / "rare.toml"
        cfg.write_text(tiny_config.read_text().replace("checkpoint_every = 3", "checkpoint_every = 1000000"))
    args = [sys.executable, "-m", "ssae", "train", "fit", str(tiny_dataset), "--category", "part", "--out", str(out),
            "--config", str(cfg), "--no-progress", "--threads", "1", "--device", "cpu"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*args, "--steps", "100000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    try:
        lines = []
        wait_for = "step 6/" if first_checkpoint == "passed" else "training "
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(wait_for):
                break
        else:
            pytest.fail("".join(lines))
        if first_checkpoint == "not yet":
            assert not (work_dir_for(out) / CKPT_NAME).exists()
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 2, rest
    message = [ln for ln in rest.strip().splitlines() if not ln.startswith("step ")]
    assert len(message) == 1, rest
    m = re.fullmatch(rf"error: interrupted \({sig.name}\) at step (\d+)/100000; saved (\S+) \(step \1\): run the same command with --resume to finish",
                     message[0])
    assert m, message[0]
    step, path = int(m.group(1)), Path(m.group(2))
    assert path == work_dir_for(out) / CKPT_NAME and path.is_file()  # the message names a file that is there
    assert torch.load(path, map_location="cpu", weights_only=False)["step"] == step  # and it holds the step it says
    if first_checkpoint == "passed":
        assert step >= 6
    assert not out.exists()  # nothing exported from a half-trained run
    done = step + 3
    r = subprocess.run([*args, "--steps", str(done), "--resume"], capture_output=True, text=True, timeout=240, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert load_bundle(out).manifest.provenance.steps == done


# --- threads under co-located load ------------------------------------------------------------------------


def test_training_threads_sleep_while_they_wait_unless_the_user_says_otherwise(tmp_path):
    """libgomp as torch loads it in a real `ssae train fit` process: spinning waits (its default) collapse
    training beside other work, so fit asks for passive ones before torch loads; a user's choice wins."""
    for user_policy, spin_count in ((None, "'0'"), ("ACTIVE", "'30000000000'")):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {"OMP_DISPLAY_ENV": "VERBOSE"}
        if user_policy:
            env["OMP_WAIT_POLICY"] = user_policy
        r = subprocess.run([sys.executable, "-m", "ssae", "train", "fit", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")],
                           capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
        assert r.returncode == 2 and "does not exist" in r.stderr, r.stderr  # torch loaded, then the missing data refused
        assert f"GOMP_SPINCOUNT = {spin_count}" in r.stderr, (user_policy, r.stderr)
