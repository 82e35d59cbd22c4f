"""The daemon on a pipelined backend: torch-cuda's slots and tickets in device="cpu" mode, real sockets.

Batch k+1 is submitted before batch k is collected; these tests check that every frame still comes out
once, in order, with ONNX Runtime's score, that the device stage times reach the metrics, that a failing
batch turns exactly its own frames "unknown", and that a reload to another backend publishes what is in
flight on the old one before closing it.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import threading
import time

import cv2
import msgspec
import numpy as np
import pytest
import zmq
from prometheus_client import generate_latest

from edge.backends import open_backend
from edge.bundle import load_bundle
from edge.client.control import send_request
from edge.daemon.config import config_from_dict
from edge.daemon.daemon import Daemon
from edge.manifest import Calibration, read_manifest, write_manifest
from edge.wire import FrameHeader, Health, Reload

torch = pytest.importorskip("torch")
DECODER = msgspec.msgpack.Decoder(FrameHeader | Health)
GPU_ON_CPU = {"device": "cpu", "in_flight": 2}
ON_GPU = {"device": "cuda", "in_flight": 2, "precision": "fp16", "cuda_graphs": True}  # what a line box runs
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")


@pytest.fixture(scope="module")
def pt2_bundle(tmp_path_factory):
    """A tiny bundle with model.pt2 beside model.onnx, for the torch-cuda backend."""
    from edge.manifest import Provenance
    from train.export import InferenceGraph, export_bundle
    from train.model import FilterAE, ModelConfig

    torch.manual_seed(2)
    net = FilterAE(ModelConfig(widths=(8, 16, 16), bottleneck_blocks=1, dilations=(1, 2), skip_levels=2)).eval()
    graph = InferenceGraph(net, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], smooth_sigma_px=1.0)
    out = tmp_path_factory.mktemp("pt2") / "tiny"
    export_bundle(graph, out, height=32, width=32, channels=3, provenance=Provenance(data="tests", recipe="untrained"), with_torch_program=True)
    return out


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def write_images(folder, n, seed):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = np.random.default_rng(seed + i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        assert cv2.imwrite(str(folder / f"{i:02d}.png"), image)
    return folder


def ort_scores(bundle, folder):
    """ONNX Runtime's score per file name, on the images exactly as the capture reads them."""
    names = sorted(p.name for p in folder.glob("*.png"))
    frames = np.stack([cv2.imread(str(folder / n), cv2.IMREAD_UNCHANGED) for n in names])
    backend = open_backend(load_bundle(bundle), "onnxruntime", threads=1, max_batch=len(names))
    try:
        return dict(zip(names, backend.infer(frames)[1].tolist()))
    finally:
        backend.close()


def make_daemon(bundle, cameras, gpu=GPU_ON_CPU, **top):
    raw = {"bundle": str(bundle), "cameras": cameras, "threads": 1, "backend": "torch-cuda", "gpu": gpu, "max_batch": 4, **top}
    raw["publish"] = {"endpoints": ["tcp://127.0.0.1:*"], "heartbeat_s": 0.2, "wait_for_subscriber_s": 10, **top.get("publish", {})}
    return Daemon(config_from_dict(raw, origin="test"))


def subscribe(ctx, endpoint):
    sock = ctx.socket(zmq.SUB)
    sock.linger = 0
    sock.subscribe(b"frame.")
    sock.connect(endpoint)
    return sock


def run_to_end(daemon, sub, timeout_s=60):
    """Run the daemon until its finite sources end; every frame header in publish order, and the exit code."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", daemon.run()), name="test-daemon", daemon=True)
    thread.start()
    frames = []
    deadline = time.monotonic() + timeout_s
    while (thread.is_alive() or sub.poll(0)) and time.monotonic() < deadline:
        if sub.poll(500):
            frames.append(DECODER.decode(sub.recv_multipart()[1]))
    thread.join(10)
    assert not thread.is_alive(), "the daemon did not stop"
    return frames, result["code"]


def sample(daemon, name, **labels):
    return daemon.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("gpu, rtol", [(GPU_ON_CPU, 1e-4), pytest.param(ON_GPU, 1e-2, marks=[needs_cuda, pytest.mark.gpu], id="cuda-fp16-graphs")],
                         ids=lambda v: "cpu" if v is GPU_ON_CPU else None)
def test_every_frame_in_order_with_onnxruntime_scores_and_device_times(gpu, rtol, pt2_bundle, tmp_path, ctx):
    folders = {"left": write_images(tmp_path / "left", 13, 0), "right": write_images(tmp_path / "right", 9, 100)}
    cameras = [{"id": cam, "source": str(f), "queue": "all", "queue_size": 8} for cam, f in folders.items()]
    daemon = make_daemon(pt2_bundle, cameras, gpu=gpu, metrics={"port": 0})
    assert daemon.model.backend.name == "torch-cuda" and daemon.model.backend.in_flight == 2
    frames, code = run_to_end(daemon, subscribe(ctx, daemon.publisher.endpoints[0]))
    assert code == 0
    for cam, folder in folders.items():
        got = [f for f in frames if f.camera == cam]
        reference = ort_scores(pt2_bundle, folder)
        assert [f.seq for f in got] == list(range(len(reference))), "every frame once, in seq order"
        assert [f.source for f in got] == sorted(reference)
        assert all(f.verdict == "unknown" and f.reason.startswith("uncalibrated") for f in got)  # the score still travels
        np.testing.assert_allclose([f.score for f in got], [reference[f.source] for f in got], rtol=rtol, atol=1e-6)
    batches = sample(daemon, "ssae_batch_size_count")
    assert batches >= 22 / 4 and sample(daemon, "ssae_batch_size_sum") == 22
    assert sample(daemon, "ssae_batches_in_flight_count") == batches
    overlapped = batches - sample(daemon, "ssae_batches_in_flight_bucket", le="1.0")
    assert overlapped >= 1, "some batch was submitted while the one before it was still in flight"
    for stage in ("h2d", "compute", "d2h"):
        assert sample(daemon, "ssae_device_stage_seconds_count", stage=stage) == batches
    assert sample(daemon, "ssae_device_stage_seconds_sum", stage="compute") > 0
    text = generate_latest(daemon.metrics.registry).decode()
    assert 'ssae_device_stage_seconds_bucket{le="1e-05",stage="compute"}' in text


class FailingBatches:
    """Failure injection around the real torch-cuda backend: the submits numbered in `fail_submit` raise,
    as does the collect of those numbered in `fail_collect` (after freeing its slot, as a backend must)."""

    def __init__(self, backend, fail_submit, fail_collect):
        self.backend = backend
        self.fail_submit, self.fail_collect = fail_submit, fail_collect
        self.sizes: list[int] = []  # frames per submit, in submit order
        self.numbers = {}  # ticket seq -> submit number

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def submit(self, frames):
        self.sizes.append(len(frames))
        if len(self.sizes) in self.fail_submit:
            raise RuntimeError(f"injected submit failure {len(self.sizes)}")
        ticket = self.backend.submit(frames)
        self.numbers[ticket.seq] = len(self.sizes)
        return ticket

    def collect_timed(self, ticket):
        result = self.backend.collect_timed(ticket)
        if self.numbers[ticket.seq] in self.fail_collect:
            raise RuntimeError(f"injected collect failure {self.numbers[ticket.seq]}")
        return result


def test_a_failing_batch_turns_exactly_its_own_frames_unknown(pt2_bundle, tmp_path, ctx):
    folder = write_images(tmp_path / "imgs", 20, 7)
    daemon = make_daemon(pt2_bundle, [{"id": "cam", "source": str(folder), "queue": "all", "queue_size": 8}], image_threshold=0.0)
    faulty = FailingBatches(daemon.model.backend, fail_submit={2}, fail_collect={4})
    daemon.model = daemon.model._replace(backend=faulty)
    frames, code = run_to_end(daemon, subscribe(ctx, daemon.publisher.endpoints[0]))
    assert code == 0 and [f.seq for f in frames] == list(range(20)) and sum(faulty.sizes) == 20
    start = 0
    for number, size in enumerate(faulty.sizes, 1):
        batch, start = frames[start : start + size], start + size
        if number == 2:
            assert all(f.verdict == "unknown" and f.reason == "backend error: RuntimeError: injected submit failure 2" for f in batch)
        elif number == 4:
            assert all(f.verdict == "unknown" and f.reason == "backend error: RuntimeError: injected collect failure 4" for f in batch)
        else:
            assert all(f.verdict == "defect" and math.isfinite(f.score) for f in batch), f"batch {number} was judged"
        assert all(math.isnan(f.score) for f in batch) == (number in (2, 4))
    assert faulty.backend.free_slots() == 2, "every slot came back"


def test_reload_to_another_backend_publishes_what_is_in_flight_first(pt2_bundle, tmp_path, ctx, caplog):
    folder = write_images(tmp_path / "imgs", 8, 50)
    calibrated = tmp_path / "calibrated"
    shutil.copytree(pt2_bundle, calibrated)
    manifest = read_manifest(calibrated)
    write_manifest(calibrated, msgspec.structs.replace(manifest, calibration=Calibration(image_threshold=1e6, pixel_threshold=1e6, method="test")))
    daemon = make_daemon(
        pt2_bundle, [{"id": "a", "source": str(folder), "loop": True, "queue": "all"}, {"id": "b", "source": str(folder), "loop": True, "queue": "all"}],
        control={"endpoint": "tcp://127.0.0.1:*"},
    )
    control = daemon.control.endpoints[0]
    sub = subscribe(ctx, daemon.publisher.endpoints[0])
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", daemon.run()), name="test-daemon", daemon=True)
    thread.start()
    frames: list[FrameHeader] = []

    def receive_for(seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if sub.poll(100):
                frames.append(DECODER.decode(sub.recv_multipart()[1]))

    old_backends = []
    caplog.set_level(logging.INFO, logger="edge.worker")
    try:
        receive_for(0.5)
        for k in range(8):  # each reload opens a new backend; stop once one swap found batches in flight
            old_backends.append(daemon.model.backend)
            reply = send_request(control, Reload(bundle=str(calibrated if k % 2 == 0 else pt2_bundle)), timeout_s=30, ctx=ctx)
            assert reply.ok, reply.message
            receive_for(0.3)
            if "in flight on the old one first" in caplog.text:
                break
        assert "in flight on the old one first" in caplog.text, "no reload ever met a batch in flight"
    finally:
        daemon.request_stop()
        thread.join(15)
        receive_for(0.3)
    assert not thread.is_alive() and result["code"] == 0
    assert all(b.module is None for b in old_backends), "every swapped-out backend was closed"
    assert not [f.reason for f in frames if "error" in f.reason], "no batch ran on a closed backend"
    for cam in ("a", "b"):
        seqs = [f.seq for f in frames if f.camera == cam]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"camera {cam}: every seq once, in order"
    assert {f.verdict for f in frames} == {"unknown", "ok"}


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"gpu": {"in_flight": 3}}, 'gpu.* applies to backend = "tensorrt" or "torch-cuda"'),
        ({"backend": "tensorrt", "gpu": {"device": "cpu"}}, "TensorRT needs a GPU"),
        ({"backend": "torch-cuda", "gpu": {"device": "gpu0"}}, 'gpu.device = "gpu0" is not a device; write "cuda", "cuda:N"'),
        ({"backend": "torch-cuda", "gpu": {"device": "cpu", "precision": "fp16"}}, '"fp16" needs a GPU'),
        ({"backend": "torch-cuda", "gpu": {"device": "cpu", "cuda_graphs": True}}, "cuda_graphs = true needs a GPU"),
        ({"backend": "tensorrt", "gpu": {"precision": "bf16"}}, '"bf16" is for backend = "torch-cuda"'),
        ({"backend": "torch-cuda", "gpu": {"in_flight": 0}}, "gpu.in_flight = 0 is below 1"),
        ({"backend": "torch-cuda", "gpu": {"inflight": 2}}, "did you mean 'in_flight'"),
    ],
)
def test_gpu_table_refusals_name_the_field_and_fix(extra, message):
    from edge.errors import UserError

    with pytest.raises(UserError, match=f"^edge.toml: .*{re.escape(message)}"):
        config_from_dict({"bundle": "b", "cameras": [{"id": "a", "source": "0"}], **extra}, origin="edge.toml")


def test_gpu_table_becomes_backend_options():
    from edge.daemon.daemon import backend_options

    def options(**raw):
        return backend_options(config_from_dict({"bundle": "b", "cameras": [{"id": "a", "source": "0"}], "threads": 2, **raw}))

    assert options() == {"spin": False} and options(spin=True) == {"spin": True}  # onnxruntime: whether its threads spin
    assert options(backend="tensorrt", gpu={"device": "cuda:1", "precision": "fp32", "in_flight": 3}) == {"device_index": 1, "in_flight": 3, "fp16": False}
    assert options(backend="tensorrt") == {"device_index": 0, "in_flight": 2, "fp16": True}
    assert options(backend="torch-cuda", gpu={"cuda_graphs": True}) == {"device": "cuda", "in_flight": 2, "cuda_graphs": True, "precision": None}
    assert options(backend="torch-cuda", gpu={"device": "cpu"})["cpu_threads"] == 2
