"""Gallery and review folder: archive entries by id only, copies never overwrite, and calibrate/train read the result."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from edge.client.view.gallery import Gallery
from edge.client.view.review import MarkRefused, Review
from edge.files import write_new_bytes as write_new
from viewpage import header, write_archive

starlette = pytest.importorskip("starlette", reason="the view extra is not installed (pip install 'ssae-inspect[view]')")


@pytest.fixture()
def archive(tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[4:12, 4:12] = 255
    t0 = time.time_ns() - 100_000_000_000
    entries = [(header(seq=s, capture_ns=t0 + s, verdict="defect" if s != 3 else "ok"), mask) for s in range(1, 6)]
    entries.append((header(camera="cam2", seq=1, capture_ns=t0 + 10), mask))
    stems = write_archive(tmp_path / "archive", entries)
    return tmp_path / "archive", stems


def test_the_gallery_lists_rejects_newest_first_across_cameras(archive):
    folder, stems = archive
    g = Gallery(folder)
    listed = [e.id for e in g.recent(10)]
    assert listed == ["cam2/" + stems[5].name] + ["cam1/" + stems[i].name for i in (4, 3, 1, 0)]  # seq 3 is ok: left out
    assert [e.id for e in g.recent(2)] == listed[:2]
    (folder / "cam1" / f"{stems[0].name}.json").write_text("{not json")
    assert "cam1/" + stems[0].name not in [e.id for e in g.recent(10)]  # a torn entry is not listed


@pytest.mark.parametrize("bad", ["../../etc/passwd", "cam1/../../../etc/passwd", "cam1/" + "0" * 19 + "-" + "0" * 9,
                                 "CAM1/0000000000000000001-000000001", "cam1/1-1", "/etc/passwd", "cam1\\..\\x"])
def test_an_id_from_the_browser_never_names_a_file_outside_the_archive(archive, bad):
    with pytest.raises(LookupError):
        Gallery(archive[0]).entry(bad)


def test_marking_copies_never_moves_and_never_overwrites(archive, tmp_path):
    folder, stems = archive
    g, review = Gallery(folder), Review(tmp_path / "review")
    e = g.entry("cam1/" + stems[1].name)
    done = review.mark(e, "false_reject")
    target = tmp_path / "review" / "false_reject" / f"cam1-{stems[1].name}.png"
    assert done.path == str(target) and not done.already
    assert target.read_bytes() == e.file(".png").read_bytes() and e.file(".png").is_file()
    assert review.mark(e, "false_reject").already  # the same mark again: nothing written
    with pytest.raises(MarkRefused, match="already marked false_reject"):
        review.mark(e, "confirmed")
    with pytest.raises(MarkRefused, match="unknown"):
        review.mark(e, "good")
    other = g.entry("cam1/" + stems[0].name)
    squatter = tmp_path / "review" / "confirmed" / f"cam1-{stems[0].name}.png"
    squatter.write_bytes(b"someone else's file")
    with pytest.raises(MarkRefused, match="not overwritten"):
        review.mark(other, "confirmed")
    assert squatter.read_bytes() == b"someone else's file"
    assert not [p for p in (tmp_path / "review").rglob("*.tmp")], "no temp files left behind"


def test_write_new_refuses_a_name_taken_between_check_and_write(tmp_path):
    taken = tmp_path / "x.png"
    taken.write_bytes(b"first")
    with pytest.raises(FileExistsError):
        write_new(taken, b"second")  # the race two browser tabs can run: the link, not the check, decides
    assert taken.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["x.png"]
    write_new(tmp_path / "y.png", b"new")
    assert (tmp_path / "y.png").read_bytes() == b"new"


def test_calibrate_and_train_read_the_review_folder_directly(archive, tmp_path):
    from calibrate.score import list_images
    from train.data import load_images

    folder, stems = archive
    g, review = Gallery(folder), Review(tmp_path / "review")
    for i in (0, 1):
        review.mark(g.entry("cam1/" + stems[i].name), "false_reject")
    review.mark(g.entry("cam1/" + stems[4].name), "confirmed")
    good = list_images(tmp_path / "review" / "false_reject", role="good")
    defect = list_images(tmp_path / "review" / "confirmed", role="defect", by_type=True)
    assert [p.suffix for p in good] == [".png", ".png"] and len(defect) == 1  # the .json records are not images
    images, paths = load_images(tmp_path / "review" / "false_reject")
    assert images.shape == (2, 64, 96, 3) and paths == good


# --- over HTTP ------------------------------------------------------------------------------------------
def client(archive_dir, review_dir):
    from starlette.testclient import TestClient

    from edge.client.view.app import build_app
    from edge.client.view.state import ViewState

    app = build_app(ViewState(), gallery=Gallery(archive_dir), review=Review(review_dir))
    return TestClient(app, base_url="http://127.0.0.1:8080")


def test_http_marks_only_same_origin_json_for_archive_ids(archive, tmp_path):
    folder, stems = archive
    http = client(folder, tmp_path / "review")
    eid = "cam1/" + stems[1].name
    assert http.get("/archive/..%2F..%2Fetc/passwd/overlay.png").status_code == 404
    assert http.get("/archive/cam1/..%2F..%2F..%2Fetc%2Fpasswd/overlay.png").status_code == 404
    assert http.post("/api/mark", json={"id": "../../etc/passwd", "label": "confirmed"}).status_code == 404
    assert http.post("/api/mark", data={"id": eid, "label": "confirmed"}).status_code == 403  # a form: cross-site capable
    evil = http.post("/api/mark", json={"id": eid, "label": "confirmed"}, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403
    assert http.get("/api/rejects", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding onto loopback
    assert not list((tmp_path / "review").rglob("*.png"))

    ok = http.post("/api/mark", json={"id": eid, "label": "confirmed"}, headers={"Origin": "http://127.0.0.1:8080"})
    assert ok.status_code == 200 and ok.json()["label"] == "confirmed"
    assert http.post("/api/mark", json={"id": eid, "label": "false_reject"}).status_code == 409
    items = {i["id"]: i for i in http.get("/api/rejects").json()["items"]}
    assert items[eid]["mark"] == "confirmed" and items[eid]["seq"] == 2
    png = http.get(f"/archive/{eid}/overlay.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    page = http.get("/")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert http.get("/static/view.js").status_code == 200 and http.get("/static/view.css").status_code == 200


# --- the command ----------------------------------------------------------------------------------------
def run_cli(*args):
    from ssae import app

    return CliRunner().invoke(app, ["edge", "view", *args])


def test_cli_refuses_bad_folders_ports_and_half_keys(archive, tmp_path):
    folder, _ = archive
    result = run_cli("tcp://127.0.0.1:1", "--archive", str(folder), "--review", str(folder / "review"))
    assert result.exit_code == 2 and "overlaps --archive" in result.output
    result = run_cli("tcp://127.0.0.1:1", "--archive", str(tmp_path / "missing"))
    assert result.exit_code == 2 and "is not a folder" in result.output
    result = run_cli("tcp://127.0.0.1:1", "--client-key", str(tmp_path / "c.key_secret"))
    assert result.exit_code == 2 and "--client-key/--server-key" in result.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        result = run_cli("tcp://127.0.0.1:1", "--port", str(taken.getsockname()[1]))
    assert result.exit_code == 2 and "choose another --port" in result.output
    result = run_cli("not-an-endpoint", "--port", "0")
    assert result.exit_code == 2 and "cannot connect" in result.output


def test_cli_help_names_the_options():
    result = run_cli("--help")
    assert result.exit_code == 0
    for option in ("--archive", "--review", "--port", "--host", "--client-key", "--server-key"):
        assert option in result.output
