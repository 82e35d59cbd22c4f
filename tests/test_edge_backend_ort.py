"""ONNX Runtime's pipelined shape: batches queue on a runner thread and come back by ticket, intact."""

from __future__ import annotations

import numpy as np
import pytest

from edge.backends import open_backend
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
