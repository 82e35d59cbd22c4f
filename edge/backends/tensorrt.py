"""TensorRT on an NVIDIA GPU: an FP16 engine built on the device, fed through pinned buffers and streams.

Build (`build_engine`, `ssae edge build-engine`): the bundle's ONNX through TensorRT's ONNX parser, one
optimisation profile per in-flight slot over the batch range 1..max_batch, the FP16 flag, and a timing
cache under BUNDLE/engines/ reused by every later build on this GPU model and TensorRT version. The plan
is stored under the key of edge/backends/engine_cache.py with its sidecar.

Run (`TensorRTBackend`): per in-flight slot an execution context on its own profile, page-locked host
buffers and device buffers allocated once for max_batch (pycuda), a CUDA stream, tensor addresses set
once, and CUDA events around upload, compute and download. uint8 frames go up (normalisation is in
the engine), the anomaly map and score come down. Slots, tickets and the pipelined `infer` are shared
with the torch-cuda backend (edge/backends/inflight.py).

TensorRT and pycuda are imported inside; written against the TensorRT 10 Python API (tensor names,
set_input_shape, set_tensor_address, execute_async_v3). Not run in this project's CI (no GPU there).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from pathlib import Path

import numpy as np

from edge.backends.engine_cache import DeviceInfo, EngineError, EngineRecord, Precision, check_engine, engine_key, find_engine, timing_cache_path, write_engine
from edge.backends.inflight import SlotRing, StageTimes, Ticket, check_frames, infer_pipelined
from edge.bundle import Bundle
from edge.files import atomic_write_bytes

log = logging.getLogger("edge.backend_tensorrt")  # the name log lines carried before edge/backends/ existed


@contextlib.contextmanager
def current_context(cuda, context):
    """Make the device's primary context current on this thread (the backend may be driven from any thread)."""
    context.push()
    try:
        yield
    finally:
        cuda.Context.pop()


def device_info(trt, device) -> DeviceInfo:
    major, minor = device.compute_capability()
    return DeviceInfo(gpu_name=device.name(), compute_capability=f"{major}.{minor}", tensorrt_version=str(trt.__version__))


def _build_in_context(trt, bundle: Bundle, info: DeviceInfo, *, precision: Precision, max_batch: int, profiles: int, opt_batch: int, workspace_mb: int) -> tuple[Path, EngineRecord]:
    """The build itself; the caller has made a CUDA context current."""
    from edge.backends.onnx_trt import prepare_for_tensorrt

    spec = bundle.manifest.input
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(prepare_for_tensorrt(bundle.model_path.read_bytes(), spec.name)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT {info.tensorrt_version} cannot parse {bundle.model_path}: {errors}; re-export the bundle or update TensorRT")
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if [t.name for t in inputs] != [spec.name] or inputs[0].dtype != trt.uint8:
        raise EngineError(f"{bundle.model_path} must take one uint8 input {spec.name!r}; found {[(t.name, str(t.dtype)) for t in inputs]}: re-export the bundle")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)  # layers may run in FP16; I/O stays uint8 in, float32 out
    h, w, c = spec.height_px, spec.width_px, spec.channels
    for _ in range(profiles):  # identical profiles: one per execution context running concurrently
        profile = builder.create_optimization_profile()
        profile.set_shape(spec.name, (1, h, w, c), (opt_batch, h, w, c), (max_batch, h, w, c))
        config.add_optimization_profile(profile)

    cache_file = timing_cache_path(bundle.engines_dir, info)
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    if not config.set_timing_cache(cache, False):  # a cache from another device/version is refused, not merged
        log.warning("timing cache %s does not fit this GPU/TensorRT; starting an empty one", cache_file)
        config.set_timing_cache(config.create_timing_cache(b""), False)

    key = engine_key(info, spec, precision=precision, max_batch=max_batch, profiles=profiles)
    log.info("building TensorRT %s engine for %s (batch 1..%d, opt %d); this takes minutes", precision, info.gpu_name, max_batch, opt_batch)
    started = time.monotonic()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT could not build an engine from {bundle.model_path} (see its log above); try --workspace-mb larger or --fp32")
    seconds = time.monotonic() - started
    bundle.engines_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cache_file, bytes(config.get_timing_cache().serialize()))
    data = bytes(plan)
    record = EngineRecord(
        key=key,
        model_id=bundle.model_id,
        plan_sha256=hashlib.sha256(data).hexdigest(),
        opt_batch=opt_batch,
        workspace_mb=workspace_mb,
        built=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        build_seconds=round(seconds, 1),
    )
    path = write_engine(bundle.engines_dir, record, data)
    log.info("engine written to %s in %.0f s", path, seconds)
    return path, record


def build_engine(
    bundle: Bundle,
    *,
    fp16: bool = True,
    max_batch: int = 8,
    workspace_mb: int = 1024,
    profiles: int = 2,
    opt_batch: int | None = None,
    device_index: int = 0,
) -> tuple[Path, EngineRecord]:
    """Build and store a TensorRT engine for this GPU; returns (plan path, its sidecar record)."""
    from edge.backends.gpu_stack import import_pycuda, import_tensorrt

    if not 1 <= max_batch <= 1024:
        raise ValueError(f"max_batch {max_batch} must lie in 1..1024")
    opt = opt_batch or max_batch  # the daemon batches across cameras: tune for full batches
    if not 1 <= opt <= max_batch:
        raise ValueError(f"opt_batch {opt} must lie in 1..max_batch ({max_batch})")
    trt, cuda = import_tensorrt(), import_pycuda()
    device = cuda.Device(device_index)
    context = device.retain_primary_context()
    try:
        with current_context(cuda, context):
            return _build_in_context(
                trt, bundle, device_info(trt, device), precision="fp16" if fp16 else "fp32",
                max_batch=max_batch, profiles=profiles, opt_batch=opt, workspace_mb=workspace_mb,
            )
    finally:
        context.detach()


class _Slot:
    """One in-flight batch: an execution context on its own profile, its buffers, stream and events."""

    def __init__(self, trt, cuda, engine, profile: int, names: tuple[str, str, str], shape: tuple[int, int, int], max_batch: int):
        h, w, c = shape
        self.context = engine.create_execution_context()
        if self.context is None:
            raise EngineError("TensorRT could not create an execution context (out of GPU memory?); lower max_batch or in_flight")
        self.stream = cuda.Stream()
        if not self.context.set_optimization_profile_async(profile, self.stream.handle):
            raise EngineError(f"engine has no optimisation profile {profile}; rebuild it with as many profiles as in-flight batches")
        self.host_in = cuda.pagelocked_empty((max_batch, h, w, c), np.uint8)
        self.host_map = cuda.pagelocked_empty((max_batch, h, w), np.float32)
        self.host_score = cuda.pagelocked_empty((max_batch,), np.float32)
        self.dev_in = cuda.mem_alloc(self.host_in.nbytes)
        self.dev_map = cuda.mem_alloc(self.host_map.nbytes)
        self.dev_score = cuda.mem_alloc(self.host_score.nbytes)
        for name, mem in zip(names, (self.dev_in, self.dev_map, self.dev_score)):
            self.context.set_tensor_address(name, int(mem))  # fixed for the slot's lifetime
        self.events = [cuda.Event() for _ in range(4)]  # start, uploaded, computed, downloaded

    def free(self) -> None:
        self.stream.synchronize()
        for mem in (self.dev_in, self.dev_map, self.dev_score):
            mem.free()
        for host in (self.host_in, self.host_map, self.host_score):
            host.base.free()  # pagelocked_empty's array is a view of a HostAllocation
        self.context = None


class TensorRTBackend:
    name = "tensorrt"

    def __init__(
        self,
        bundle: Bundle,
        *,
        max_batch: int = 8,
        fp16: bool = True,
        in_flight: int = 2,
        device_index: int = 0,
        engine: str | Path | None = None,
        build_missing: bool = True,
        workspace_mb: int = 1024,
    ):
        from edge.backends.gpu_stack import import_pycuda, import_tensorrt

        trt, cuda = import_tensorrt(), import_pycuda()
        self.trt, self.cuda = trt, cuda
        spec = bundle.manifest.input
        self.shape = (spec.height_px, spec.width_px, spec.channels)
        self.names = (spec.name, bundle.manifest.outputs.anomaly_map, bundle.manifest.outputs.score)
        self.max_batch = max_batch
        self.in_flight = in_flight
        self.ring = SlotRing(in_flight)
        self.slots: list[_Slot] = []
        device = cuda.Device(device_index)
        self.context = device.retain_primary_context()
        try:
            with current_context(cuda, self.context):
                info = device_info(trt, device)
                precision: Precision = "fp16" if fp16 else "fp32"
                want = engine_key(info, spec, precision=precision, max_batch=max_batch, profiles=in_flight)
                plan = Path(engine) if engine else self._find_or_build(trt, bundle, info, want, build_missing, workspace_mb)
                self.record = check_engine(plan, want, bundle.model_id, str(bundle.path))
                self.plan = plan
                self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
                self.engine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
                if self.engine is None:
                    raise EngineError(f"TensorRT {info.tensorrt_version} cannot load {plan}; rebuild it with `ssae edge build-engine {bundle.path}`")
                self._check_io()
                for k in range(in_flight):  # appended one by one so close() frees a partial set
                    self.slots.append(_Slot(trt, cuda, self.engine, k, self.names, self.shape, max_batch))
        except BaseException:
            self.close()
            raise

    def _find_or_build(self, trt, bundle: Bundle, info: DeviceInfo, want, build_missing: bool, workspace_mb: int) -> Path:
        plan, rejected = find_engine(bundle.engines_dir, want, bundle.model_id)
        if plan is not None:
            return plan
        if not build_missing:
            why = f" (found: {' | '.join(rejected)})" if rejected else ""
            raise EngineError(f"no TensorRT engine in {bundle.engines_dir} fits this GPU and bundle{why}; build one with `ssae edge build-engine {bundle.path}`")
        log.warning("no engine for %s in %s: building one now (first start on this device)", info.gpu_name, bundle.engines_dir)
        path, _ = _build_in_context(
            trt, bundle, info, precision=want.precision, max_batch=want.max_batch, profiles=want.profiles, opt_batch=want.max_batch, workspace_mb=workspace_mb
        )
        return path

    def _check_io(self) -> None:
        """The engine's tensors must be the bundle's: uint8 frames in, float32 map and score out."""
        trt, engine = self.trt, self.engine
        found = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            found[name] = (engine.get_tensor_mode(name), engine.get_tensor_dtype(name))
        want = {
            self.names[0]: (trt.TensorIOMode.INPUT, trt.DataType.UINT8),
            self.names[1]: (trt.TensorIOMode.OUTPUT, trt.DataType.FLOAT),
            self.names[2]: (trt.TensorIOMode.OUTPUT, trt.DataType.FLOAT),
        }
        if found != want:
            raise EngineError(f"engine {self.plan} has tensors {found}, the bundle needs {want}; rebuild it with `ssae edge build-engine`")
        if engine.num_optimization_profiles < self.in_flight:
            raise EngineError(f"engine {self.plan} has {engine.num_optimization_profiles} profile(s) for {self.in_flight} in-flight batches; rebuild it")
        top = engine.get_tensor_profile_shape(self.names[0], 0)[2]
        if top[0] < self.max_batch:
            raise EngineError(f"engine {self.plan} takes batches up to {top[0]}, max_batch is {self.max_batch}; rebuild with --max-batch {self.max_batch}")

    # -- in flight ------------------------------------------------------------------------------------

    def free_slots(self) -> int:
        return self.ring.free()

    def submit(self, frames: np.ndarray) -> Ticket:
        """Enqueue upload, compute and download of 1..max_batch frames on a free slot's stream; returns at once."""
        n = check_frames(frames, self.shape, self.max_batch)
        ticket = self.ring.acquire(n)
        slot = self.slots[ticket.slot]
        try:
            with current_context(self.cuda, self.context):
                self._enqueue(slot, frames, n)
        except BaseException:
            self.ring.release(ticket)
            raise
        return ticket

    def _enqueue(self, slot: _Slot, frames: np.ndarray, n: int) -> None:
        cuda = self.cuda
        start, uploaded, computed, downloaded = slot.events
        np.copyto(slot.host_in[:n], frames)  # the only host copy: into page-locked memory, so the DMA is async
        start.record(slot.stream)
        cuda.memcpy_htod_async(slot.dev_in, slot.host_in[:n], slot.stream)
        uploaded.record(slot.stream)
        if not slot.context.set_input_shape(self.names[0], (n, *self.shape)):
            raise EngineError(f"engine refused input shape {(n, *self.shape)}; rebuild it for batch 1..{self.max_batch}")
        if not slot.context.execute_async_v3(slot.stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        computed.record(slot.stream)
        cuda.memcpy_dtoh_async(slot.host_map[:n], slot.dev_map, slot.stream)
        cuda.memcpy_dtoh_async(slot.host_score[:n], slot.dev_score, slot.stream)
        downloaded.record(slot.stream)

    def collect_timed(self, ticket: Ticket) -> tuple[np.ndarray, np.ndarray, StageTimes]:
        self.ring.check(ticket)
        slot = self.slots[ticket.slot]
        with current_context(self.cuda, self.context):
            start, uploaded, computed, downloaded = slot.events
            downloaded.synchronize()
            times = StageTimes(
                count=ticket.count,
                h2d_ms=uploaded.time_since(start),
                compute_ms=computed.time_since(uploaded),
                d2h_ms=downloaded.time_since(computed),
            )
        n = ticket.count
        amap, score = slot.host_map[:n].copy(), slot.host_score[:n].copy()  # the slot is reused next
        self.ring.release(ticket)
        return amap, score, times

    def collect(self, ticket: Ticket) -> tuple[np.ndarray, np.ndarray]:
        amap, score, _ = self.collect_timed(ticket)
        return amap, score

    def infer(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return infer_pipelined(self, frames)

    def close(self) -> None:
        context = getattr(self, "context", None)
        if context is None:
            return
        with current_context(self.cuda, context):
            for slot in self.slots:
                slot.free()
            self.slots = []
            # TensorRT objects free GPU memory when dropped: drop them while the context is current.
            self.engine = None
            self.runtime = None
        context.detach()
        self.context = None

