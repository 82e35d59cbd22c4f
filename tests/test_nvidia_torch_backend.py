"""The torch-cuda backend: its slots, tickets and results checked on the CPU against ONNX Runtime.

The same code runs on a GPU with streams, pinned buffers, FP16 and CUDA graphs; those tests skip
here (no CUDA) and run where `torch.cuda.is_available()`.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge.backends import open_backend
from edge.backends.inflight import InFlightError, SlotRing, Ticket
from edge.bundle import load_bundle
from edge.errors import UserError
from edge.manifest import BundleError

torch = pytest.importorskip("torch")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")


@pytest.fixture(scope="module")
def pt2_bundle(tmp_path_factory):
    """A tiny bundle with model.pt2 beside model.onnx (the conftest bundle has the ONNX only)."""
    from edge.manifest import Provenance
    from train.export import InferenceGraph, export_bundle
    from train.model import FilterAE, ModelConfig

    torch.manual_seed(1)
    net = FilterAE(ModelConfig(widths=(8, 16, 16), bottleneck_blocks=1, dilations=(1, 2), skip_levels=2)).eval()
    graph = InferenceGraph(net, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], smooth_sigma_px=1.0)
    out = tmp_path_factory.mktemp("pt2") / "tiny"
    export_bundle(graph, out, height=32, width=32, channels=3, provenance=Provenance(data="tests", recipe="untrained"), with_torch_program=True)
    return load_bundle(out)


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(3).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(pt2_bundle, frames):
    ort = open_backend(pt2_bundle, "onnxruntime", threads=1, max_batch=16)
    try:
        return ort.infer(frames)
    finally:
        ort.close()


def cpu_backend(bundle, **kw):
    kw = {"max_batch": 4, "device": "cpu", "cpu_threads": 1, "warmup": False, **kw}
    return open_backend(bundle, "torch-cuda", **kw)


def test_program_moves_whole_to_the_gpu(pt2_bundle):
    """Export on the CPU bakes device=cpu into the graph (an input check among others): the loader must
    rewrite every device argument, or the first GPU frame fails. Checked on the meta device, here too."""
    from edge.backends.torch_cuda import PT2_NAME, load_program

    module = load_program(torch, pt2_bundle.path / PT2_NAME, torch.device("meta"))
    devices = {v for n in module.graph.nodes for v in n.kwargs.values() if isinstance(v, torch.device)}
    assert devices <= {torch.device("meta")}, devices
    assert {t.device.type for t in [*module.parameters(), *module.buffers()]} == {"meta"}
    amap, score = module(torch.empty((2, 32, 32, 3), dtype=torch.uint8, device="meta"))
    assert amap.shape == (2, 32, 32) and score.shape == (2,) and amap.device.type == "meta"


def test_cpu_matches_onnxruntime_in_order(pt2_bundle, frames, reference):
    backend = cpu_backend(pt2_bundle, channels_last=True)
    try:
        assert backend.name == "torch-cuda" and backend.max_batch == 4 and backend.precision == "fp32"
        amap, score = backend.infer(frames)  # 11 frames: chunks of 4, 4, 3 across 2 slots
        assert amap.dtype == np.float32 and score.dtype == np.float32
        assert amap.shape == (11, 32, 32) and score.shape == (11,)
        np.testing.assert_allclose(amap, reference[0], atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(score, reference[1], atol=1e-5, rtol=1e-4)
        one_map, one_score = backend.infer(frames[5:6])
        np.testing.assert_allclose(one_score, reference[1][5:6], atol=1e-5, rtol=1e-4)
        assert backend.free_slots() == 2
    finally:
        backend.close()


def test_submit_collect_tickets(pt2_bundle, frames, reference):
    backend = cpu_backend(pt2_bundle, in_flight=2, channels_last=False)
    try:
        first = backend.submit(frames[0:3])
        second = backend.submit(frames[3:7])
        assert (first.slot, second.slot) == (0, 1) and (first.count, second.count) == (3, 4)
        with pytest.raises(InFlightError, match="all 2 in-flight slots are busy"):
            backend.submit(frames[7:8])
        with pytest.raises(InFlightError, match="no free slot"):
            backend.infer(frames[7:8])
        m2, s2, times = backend.collect_timed(second)  # out of order is fine: each ticket owns its slot
        np.testing.assert_allclose(s2, reference[1][3:7], atol=1e-5, rtol=1e-4)
        assert times.count == 4 and times.compute_ms > 0 and times.total_ms >= times.compute_ms
        third = backend.submit(frames[7:11])
        assert third.slot == 1
        m1, s1 = backend.collect(first)
        np.testing.assert_allclose(m1, reference[0][0:3], atol=1e-5, rtol=1e-4)
        with pytest.raises(InFlightError, match="not in flight"):
            backend.collect(first)  # twice
        with pytest.raises(InFlightError, match="not in flight"):
            backend.collect(Ticket(0, 999, 1))  # forged / another backend's
        m3, s3 = backend.collect(third)
        np.testing.assert_allclose(s3, reference[1][7:11], atol=1e-5, rtol=1e-4)
        # Results are copies: the next batch in the same slot leaves them alone.
        backend.infer(frames[:4])
        np.testing.assert_allclose(s1, reference[1][0:3], atol=1e-5, rtol=1e-4)
    finally:
        backend.close()


def test_bad_frames_refused_and_slot_freed(pt2_bundle, frames):
    backend = cpu_backend(pt2_bundle)
    try:
        for bad, match in [
            (frames[:2].astype(np.float32), "uint8"),
            (frames[:2, :16], r"\(N, 32, 32, 3\)"),
            (frames[0], r"\(N, 32, 32, 3\)"),
            (frames[:5], "1..4"),
            (frames[:0], "1..4"),
        ]:
            with pytest.raises(ValueError, match=match):
                backend.submit(bad)
        assert backend.free_slots() == 2
        assert backend.infer(frames[:9])[1].shape == (9,)  # infer splits what submit refuses
    finally:
        backend.close()


def test_mixed_precision_keeps_post_processing_fp32(pt2_bundle, frames, reference):
    """bf16 autocast on the CPU runs the same rewrite fp16 uses on a GPU: the smoothing convs stay FP32."""
    backend = cpu_backend(pt2_bundle, precision="bf16")
    try:
        assert backend.post_fp32_convs == 2  # the two separable Gaussian passes, not the network's convs
        fp32_nodes = [n for n in backend.module.graph.nodes if getattr(n.target, "__name__", "") == "conv2d_fp32"]
        assert [n.args[1].name for n in fp32_nodes] == ["kx", "ky"]
        amap, score = backend.infer(frames)
        assert amap.dtype == np.float32 and score.dtype == np.float32
        np.testing.assert_allclose(score, amap.reshape(len(frames), -1).max(axis=1), rtol=0, atol=0)
        # bf16 keeps 8 bits of mantissa: agreement to a few percent of the score is what it can do.
        np.testing.assert_allclose(score, reference[1], rtol=0.05)
    finally:
        backend.close()


def test_refusals(pt2_bundle, tiny_bundle):
    with pytest.raises(BundleError, match="model.pt2 is missing.*re-export it with a current `ssae train fit`"):
        cpu_backend(load_bundle(tiny_bundle))
    with pytest.raises(ValueError, match='"fp16" needs device "cuda"'):
        cpu_backend(pt2_bundle, precision="fp16")
    with pytest.raises(ValueError, match="cuda_graphs needs"):
        cpu_backend(pt2_bundle, cuda_graphs=True)
    with pytest.raises(ValueError, match="in_flight must be at least 1"):
        cpu_backend(pt2_bundle, in_flight=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a box without CUDA")
def test_no_cuda_is_one_clear_error(pt2_bundle):
    with pytest.raises(UserError, match="torch-cuda backend needs CUDA.*onnxruntime"):
        open_backend(pt2_bundle, "torch-cuda")


def test_slot_ring_round_robin():
    ring = SlotRing(3)
    a, b = ring.acquire(1), ring.acquire(2)
    ring.release(a)
    c = ring.acquire(1)
    assert (a.slot, b.slot, c.slot) == (0, 1, 2) and ring.free() == 1  # round robin: 2 before the freed 0
    d = ring.acquire(5)
    assert (d.slot, d.seq, d.count) == (0, 4, 5) and ring.free() == 0
    with pytest.raises(InFlightError):
        ring.acquire(1)
    ring.release(b)
    assert ring.acquire(1).slot == 1


# -- GPU only -----------------------------------------------------------------------------------------


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("graphs", [False, True])
def test_cuda_fp16_close_to_fp32(pt2_bundle, frames, reference, graphs):
    backend = open_backend(pt2_bundle, "torch-cuda", max_batch=4, precision="fp16", cuda_graphs=graphs)
    try:
        assert backend.pinned and backend.slots[0].host_in.is_pinned()
        amap, score = backend.infer(frames)
        np.testing.assert_allclose(score, reference[1], rtol=0.01)
        tickets = [backend.submit(frames[:4]), backend.submit(frames[4:8])]
        times = [backend.collect_timed(t)[2] for t in tickets]
        assert all(t.h2d_ms >= 0 and t.compute_ms > 0 and t.d2h_ms >= 0 for t in times)
    finally:
        backend.close()


@pytest.mark.gpu
@cuda
def test_cuda_fp32_matches_onnxruntime(pt2_bundle, frames, reference):
    backend = open_backend(pt2_bundle, "torch-cuda", max_batch=4, precision="fp32", pinned=False)
    try:
        amap, score = backend.infer(frames)
        np.testing.assert_allclose(score, reference[1], rtol=1e-3, atol=1e-5)
    finally:
        backend.close()
