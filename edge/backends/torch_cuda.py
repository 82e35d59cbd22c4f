"""torch on an NVIDIA GPU: the bundle's torch.export program with pinned buffers, streams and FP16.

The GPU path for boxes without TensorRT, and the one we can verify on lent machines. It has the
structure of the TensorRT backend (edge/backends/tensorrt.py): per in-flight slot, page-locked host
buffers and device buffers allocated once for max_batch, one CUDA stream, CUDA events around upload,
compute and download; at least two slots so copies overlap compute. Optionally each slot replays CUDA
graphs captured at fixed batch sizes (a smaller batch runs in the next captured size up).

Precision: "fp16" runs the network under autocast, while everything the export wraps around it
(uint8 -> float normalisation, the squared-error map and its Gaussian smoothing, the max) stays in
FP32: the smoothing convolutions are rewritten to run outside autocast (see keep_post_fp32).

device="cpu" runs the same slots and tickets without streams, pinning or graphs, so that batching,
queueing and result order are tested on any machine ("bf16" autocast exercises the precision path).
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np

from edge.backends.inflight import SlotRing, StageTimes, Ticket, check_frames, infer_pipelined
from edge.bundle import Bundle
from edge.manifest import BundleError

PT2_NAME = "model.pt2"
Precision = Literal["fp32", "fp16", "bf16"]


def conv2d_fp32(x, weight, bias=None, stride=(1,), padding=(0,), dilation=(1,), groups=1):
    """aten.conv2d outside autocast, in FP32: for the post-processing convolutions."""
    import torch

    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.ops.aten.conv2d.default(x.float(), weight.float(), None if bias is None else bias.float(), stride, padding, dilation, groups)


def keep_post_fp32(module, network_prefix: str = "net."):
    """Rewrite convolutions whose weights are not the network's (the smoothing kernels) to run in FP32.

    Autocast would run every conv2d in FP16, the Gaussian smoothing of the error map included. The
    other post-processing ops (sub, pow, mean, amax) already run in FP32: the network's FP16 output
    is promoted when it meets the FP32 mean/std buffers. Returns how many convolutions were rewritten.
    """
    import torch

    attrs = {n.name: n.target for n in module.graph.nodes if n.op == "get_attr"}
    count = 0
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.conv2d.default:
            weight = node.args[1]
            target = attrs.get(getattr(weight, "name", None), "")
            if not target.startswith(network_prefix):
                node.target = conv2d_fp32
                count += 1
    module.graph.lint()
    module.recompile()
    return count


def load_program(torch, path, device):
    """The bundle's exported program as a module on device (in eval mode already; .eval() is not supported on it).

    Export bakes the exporting device into the graph: an input check asserts that frames are on the CPU,
    so module().to("cuda") fails at the first frame ("Tensor device mismatch"). The export pass moves the
    weights, constants and every device argument together.
    """
    from torch.export.passes import move_to_device_pass

    try:
        program = torch.export.load(str(path))
    except Exception as e:  # torch raises several types for a foreign or truncated archive
        raise BundleError(f"bundle refused: torch cannot load {path} ({e}); re-export the bundle with this torch version") from None
    return move_to_device_pass(program, device).module()


class _Slot:
    """Buffers, stream and events of one in-flight batch."""

    def __init__(self, torch, device, shape: tuple[int, int, int], max_batch: int, pinned: bool):
        h, w, c = shape
        cuda = device.type == "cuda"
        pin = cuda and pinned
        self.host_in = torch.empty((max_batch, h, w, c), dtype=torch.uint8, pin_memory=pin)
        self.host_map = torch.empty((max_batch, h, w), dtype=torch.float32, pin_memory=pin)
        self.host_score = torch.empty((max_batch,), dtype=torch.float32, pin_memory=pin)
        self.host_in_np = self.host_in.numpy()  # shares memory: frames are copied in once, by numpy
        self.dev_in = torch.empty((max_batch, h, w, c), dtype=torch.uint8, device=device) if cuda else self.host_in
        self.stream = torch.cuda.Stream(device=device) if cuda else None
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(4)] if cuda else []
        self.graphs: dict[int, tuple] = {}  # batch size -> (CUDAGraph, static map, static score)
        self.pool = None
        self.host_times: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.count = 0


class TorchCudaBackend:
    name = "torch-cuda"

    def __init__(
        self,
        bundle: Bundle,
        *,
        max_batch: int = 8,
        device: str = "cuda",
        precision: Precision | None = None,
        in_flight: int = 2,
        pinned: bool = True,
        cuda_graphs: bool = False,
        graph_batches: tuple[int, ...] | None = None,
        channels_last: bool = True,
        warmup: bool = True,
        cpu_threads: int = 0,
    ):
        """max_batch: frames per submit; device: "cuda", "cuda:N" or "cpu"; precision: fp16 (default on
        CUDA), fp32, or bf16; in_flight: slots (>= 2 for overlap); pinned: page-locked host buffers (off
        only to measure what they bring); cuda_graphs: replay graphs captured at graph_batches (default
        powers of two up to max_batch); channels_last: NHWC weights for tensor-core kernels; warmup: run
        batch 1 and max_batch once so the first frame on the line is not the slow one.
        """
        from edge.backends.gpu_stack import import_torch

        torch = import_torch(device)
        if cpu_threads:
            torch.set_num_threads(cpu_threads)  # process-wide in torch; 0 leaves torch's default
        self.torch = torch
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.precision: Precision = precision or ("fp16" if cuda else "fp32")
        if self.precision == "fp16" and not cuda:
            raise ValueError('precision "fp16" needs device "cuda"; on the CPU use "fp32" or "bf16"')
        if cuda_graphs and not cuda:
            raise ValueError('cuda_graphs needs device "cuda"')
        spec = bundle.manifest.input
        self.shape = (spec.height_px, spec.width_px, spec.channels)
        self.max_batch = max_batch
        self.in_flight = in_flight
        self.pinned = pinned and cuda
        self.module = self._load(bundle)
        if channels_last:
            # Frames arrive NHWC, so the normalised input is channels-last already; matching weights let
            # cuDNN pick NHWC tensor-core kernels without a layout conversion per layer.
            self.module = self.module.to(memory_format=torch.channels_last)
        self.post_fp32_convs = keep_post_fp32(self.module) if self.precision != "fp32" else 0
        self.ring = SlotRing(in_flight)
        self.slots = [_Slot(torch, self.device, self.shape, max_batch, pinned) for _ in range(in_flight)]
        self.graph_batches = tuple(sorted(set(graph_batches or default_graph_batches(max_batch))))
        if cuda_graphs:
            if self.graph_batches[-1] != max_batch or self.graph_batches[0] < 1:
                raise ValueError(f"graph_batches {self.graph_batches} must lie in 1..{max_batch} and include max_batch {max_batch}")
            for slot in self.slots:
                self._capture(slot)
        elif warmup:
            for n in sorted({1, max_batch}):  # first calls pick kernels; keep that out of the line's latency
                self.infer(np.zeros((n, *self.shape), np.uint8))

    def _load(self, bundle: Bundle):
        path = bundle.path / PT2_NAME
        if PT2_NAME not in bundle.manifest.extras or not path.is_file():
            raise BundleError(
                f"bundle refused for torch-cuda: {path} is missing (this bundle has model.onnx only); "
                "re-export it with a current `ssae train fit`, or use backend \"tensorrt\" or \"onnxruntime\""
            )
        return load_program(self.torch, path, self.device)

    # -- compute --------------------------------------------------------------------------------------

    def _autocast(self):
        dtype = {"fp16": self.torch.float16, "bf16": self.torch.bfloat16}.get(self.precision)
        # cache_enabled=False: cached weight casts must not outlive a CUDA graph capture.
        return self.torch.autocast(self.device.type, dtype=dtype or self.torch.float32, enabled=dtype is not None, cache_enabled=False)

    def _forward(self, frames):
        with self.torch.inference_mode(), self._autocast():
            return self.module(frames)

    def _capture(self, slot: _Slot) -> None:
        """One CUDA graph per batch size per slot, each slot with its own memory pool (slots run concurrently)."""
        torch = self.torch
        slot.pool = torch.cuda.graph_pool_handle()
        with torch.cuda.stream(slot.stream):
            for n in self.graph_batches:
                for _ in range(2):  # warm-up outside capture: cuDNN picks kernels, allocator settles
                    self._forward(slot.dev_in[:n])
        torch.cuda.synchronize(self.device)
        for n in sorted(self.graph_batches, reverse=True):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=slot.pool, stream=slot.stream):
                amap, score = self._forward(slot.dev_in[:n])
            slot.graphs[n] = (graph, amap, score)
        torch.cuda.synchronize(self.device)

    def _run(self, slot: _Slot, n: int):
        if slot.graphs:
            size = next(b for b in self.graph_batches if b >= n)  # rows n..size hold stale frames; ignored
            graph, amap, score = slot.graphs[size]
            graph.replay()
            return amap[:n], score[:n]
        return self._forward(slot.dev_in[:n])

    # -- in flight ------------------------------------------------------------------------------------

    def free_slots(self) -> int:
        return self.ring.free()

    def submit(self, frames: np.ndarray) -> Ticket:
        """Enqueue one batch (1..max_batch frames) and return at once; results come from collect(ticket)."""
        n = check_frames(frames, self.shape, self.max_batch)
        ticket = self.ring.acquire(n)
        slot = self.slots[ticket.slot]
        try:
            np.copyto(slot.host_in_np[:n], frames)
            slot.count = n
            if slot.stream is None:
                self._submit_cpu(slot, n)
            else:
                self._submit_cuda(slot, n)
        except BaseException:
            self.ring.release(ticket)
            raise
        return ticket

    def _submit_cuda(self, slot: _Slot, n: int) -> None:
        torch = self.torch
        start, uploaded, computed, downloaded = slot.events
        with torch.cuda.stream(slot.stream):
            start.record()
            slot.dev_in[:n].copy_(slot.host_in[:n], non_blocking=True)
            uploaded.record()
            amap, score = self._run(slot, n)
            computed.record()
            slot.host_map[:n].copy_(amap, non_blocking=True)  # casts to float32 if the output were half
            slot.host_score[:n].copy_(score, non_blocking=True)
            downloaded.record()

    def _submit_cpu(self, slot: _Slot, n: int) -> None:
        t0 = time.perf_counter()
        amap, score = self._run(slot, n)
        t1 = time.perf_counter()
        slot.host_map[:n].copy_(amap)
        slot.host_score[:n].copy_(score)
        slot.host_times = (0.0, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3)

    def collect_timed(self, ticket: Ticket) -> tuple[np.ndarray, np.ndarray, StageTimes]:
        """Wait for the ticket's batch; (anomaly_map (n, H, W), score (n,), stage times), owned by the caller."""
        self.ring.check(ticket)
        slot = self.slots[ticket.slot]
        if slot.stream is not None:
            start, uploaded, computed, downloaded = slot.events
            downloaded.synchronize()
            times = (start.elapsed_time(uploaded), uploaded.elapsed_time(computed), computed.elapsed_time(downloaded))
        else:
            times = slot.host_times
        n = ticket.count
        amap = slot.host_map[:n].numpy().copy()  # the slot's buffers are reused by the next submit
        score = slot.host_score[:n].numpy().copy()
        self.ring.release(ticket)
        return amap, score, StageTimes(count=n, h2d_ms=times[0], compute_ms=times[1], d2h_ms=times[2])

    def collect(self, ticket: Ticket) -> tuple[np.ndarray, np.ndarray]:
        amap, score, _ = self.collect_timed(ticket)
        return amap, score

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Blocking: any number of frames, split into max_batch chunks that overlap across slots."""
        return infer_pipelined(self, frames)

    def close(self) -> None:
        if self.device.type == "cuda" and self.slots:
            self.torch.cuda.synchronize(self.device)
        self.slots = []
        self.module = None


def default_graph_batches(max_batch: int) -> tuple[int, ...]:
    """Powers of two up to max_batch, and max_batch itself: a batch pads by less than 2x."""
    sizes = {max_batch}
    b = 1
    while b < max_batch:
        sizes.add(b)
        b *= 2
    return tuple(sorted(sizes))
