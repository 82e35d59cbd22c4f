"""ONNX Runtime: batches queue on a runner thread and come back by ticket, intact; its threads do not spin unless asked."""

from __future__ import annotations

import numpy as np
import pytest

from edge.backends import open_backend
from edge.backends.ort import SPIN_KEY
from edge.backends.inflight import InFlightError, infer_pipelined
from edge.bundle import load_bundle


@pytest.fixture()
def backend(tiny_bundle):
    b = open_backend(load_bundle(tiny_bundle), "onnxruntime", threads=1, max_batch=4)
    yield b
    b.close()


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_submitted_batches_match_infer_even_when_the_caller_reuses_its_array(backend):
    a, b = frames(3, 1), frames(2, 2)
    want_a, want_b = backend.infer(a), backend.infer(b)
    buf = a.copy()
    ta = backend.submit(buf)
    buf[:] = 0  # the backend took a copy: the batch in flight is not the caller's buffer
    tb = backend.submit(b)
    assert backend.free_slots() == 0
    with pytest.raises(InFlightError, match="collect a ticket"):
        backend.submit(b)
    got_b, got_a = backend.collect(tb), backend.collect(ta)  # any order
    for got, want in ((got_a, want_a), (got_b, want_b)):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    assert backend.free_slots() == 2
    with pytest.raises(InFlightError, match="not in flight"):
        backend.collect(ta)


def test_wrong_frames_refused_at_submit_and_slots_stay_free(backend):
    with pytest.raises(ValueError, match=r"uint8 \(N, 32, 32, 3\)"):
        backend.submit(np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="max_batch"):
        backend.submit(frames(5))
    assert backend.free_slots() == 2


def test_infer_pipelined_chunks_by_max_batch_in_order(backend):
    x = frames(10, 3)
    maps, scores = infer_pipelined(backend, x)
    want_maps, want_scores = backend.infer(x)
    np.testing.assert_allclose(maps, want_maps, atol=1e-6)
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)


def spinning(backend) -> str:
    """The spin setting as the live session reports it back (ONNX Runtime's own default, when unset, is "1")."""
    return backend.session.get_session_options().get_session_config_entry(SPIN_KEY)


def test_threads_do_not_spin_by_default_and_spin_when_asked(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    for options, want in (({}, "0"), ({"spin": False}, "0"), ({"spin": True}, "1")):
        backend = open_backend(bundle, "onnxruntime", threads=2, max_batch=2, **options)
        try:
            assert spinning(backend) == want and backend.spin == (want == "1")
            backend.infer(frames(2))  # and it still runs
        finally:
            backend.close()


def test_default_threads_are_the_cores_this_process_may_use(tiny_bundle):
    """threads=0 follows the CPU affinity (a cpuset, systemd's CPUAffinity), not the machine's core count."""
    import os
    import subprocess
    import sys

    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from edge.backends import open_backend; from edge.bundle import load_bundle; "
        f"b = open_backend(load_bundle({str(tiny_bundle)!r}), 'onnxruntime'); print(b.threads, b.session.get_session_options().intra_op_num_threads)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.stdout.split() == ["1", "1"], done.stdout + done.stderr


def test_the_daemon_builds_its_backend_with_the_configured_spin(tiny_bundle, tmp_path):
    import cv2

    from edge.daemon.config import config_from_dict
    from edge.daemon.daemon import Daemon

    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    for i in range(3):
        writer.write(frames(1, i)[0])
    writer.release()
    for top, want in (({}, "0"), ({"spin": True}, "1")):
        raw = {"bundle": str(tiny_bundle), "threads": 1, "cameras": [{"id": "cam0", "source": str(video), "queue": "all"}],
               "publish": {"endpoints": ["tcp://127.0.0.1:*"]}, **top}
        daemon = Daemon(config_from_dict(raw, origin="test"))
        assert spinning(daemon.model.backend) == want
        assert daemon.run() == 0  # the file ends, the daemon drains and closes its backend
