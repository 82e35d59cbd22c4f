"""The TensorRT backend and engine build.

Two kinds of test:
- `test_fake_trt_*`: TensorRT and pycuda cannot exist on this machine, so a FAKE of the TensorRT 10 /
  pycuda API surface the backend uses (names and signatures from their documentation) stands in,
  computing with ONNX Runtime on host memory. These prove the backend's own logic (engine lookup and
  build-on-first-start, sidecars, timing cache, profiles per slot, tensor addresses, shapes, slot
  reuse, result order, timings); they prove nothing about TensorRT itself.
- `test_real_trt_*`: the real stack on a GPU; skipped where tensorrt, pycuda or CUDA is missing.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge.backends.engine_cache import DeviceInfo, EngineError, read_record, timing_cache_path
from edge.bundle import load_bundle

# -- a fake of the TensorRT 10 / pycuda surface, backed by ONNX Runtime ------------------------------


def make_fake_stack(gpu_name: str = "Fake GPU 80GB", cc: tuple[int, int] = (9, 0), version: str = "10.3.0"):
    memory: dict[int, np.ndarray] = {}  # device address -> bytes
    addresses = itertools.count(0x10000, 0x10000)
    calls: list[str] = []

    # pycuda.driver
    cuda = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    class Device:
        def __init__(self, index):
            self.index = index

        @staticmethod
        def count():
            return 1

        def name(self):
            return gpu_name

        def compute_capability(self):
            return cc

        def retain_primary_context(self):
            return FakeContext()

    class FakeContext:
        depth = 0

        def push(self):
            FakeContext.depth += 1

        @staticmethod
        def pop():
            FakeContext.depth -= 1

        def detach(self):
            calls.append("detach")

    class HostAllocation:
        def __init__(self, shape, dtype):
            self.array = np.zeros(shape, dtype)
            self.__array_interface__ = self.array.__array_interface__
            self.freed = False

        def free(self):
            self.freed = True

    class DeviceAllocation:
        def __init__(self, nbytes):
            self.address = next(addresses)
            memory[self.address] = np.zeros(nbytes, np.uint8)

        def __int__(self):
            return self.address

        def free(self):
            del memory[self.address]

    class Stream:
        def __init__(self):
            self.handle = next(addresses)

        def synchronize(self):
            pass

    class Event:
        def record(self, stream=None):
            assert FakeContext.depth > 0, "CUDA call without a current context"
            self.t = time.perf_counter()

        def synchronize(self):
            pass

        def time_since(self, other):
            return (self.t - other.t) * 1e3

    def memcpy_htod_async(dest, src, stream=None):
        flat = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
        memory[int(dest)][: flat.size] = flat

    def memcpy_dtoh_async(dest, src, stream=None):
        flat = dest.reshape(-1).view(np.uint8)
        flat[:] = memory[int(src)][: flat.size]

    cuda.Error, cuda.Device, cuda.Context, cuda.Stream, cuda.Event = Error, Device, FakeContext, Stream, Event
    cuda.init = lambda: None
    cuda.pagelocked_empty = lambda shape, dtype: np.asarray(HostAllocation(shape, dtype))
    cuda.mem_alloc = DeviceAllocation
    cuda.memcpy_htod_async, cuda.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda

    # tensorrt
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.DataType = types.SimpleNamespace(UINT8="uint8", FLOAT="float32")
    trt.uint8 = trt.DataType.UINT8
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16")

    class Logger:
        WARNING = 2

        def __init__(self, severity=2):
            pass

    class Network:
        def __init__(self):
            self.model = None

        @property
        def num_inputs(self):
            return len(self.model.graph.input)

        def get_input(self, i):
            vi = self.model.graph.input[i]
            dtype = "uint8" if vi.type.tensor_type.elem_type == onnx.TensorProto.UINT8 else "other"
            return types.SimpleNamespace(name=vi.name, dtype=dtype)

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse(self, data):
            self.network.model = onnx.load_from_string(data)
            first = [n.op_type for n in self.network.model.graph.node if "frames" in n.input]
            calls.append(f"parse:{first}")
            return True

    class Profile:
        def set_shape(self, name, min, opt, max):  # noqa: A002 - TensorRT's keyword names
            self.shapes = (name, tuple(min), tuple(opt), tuple(max))

    class Cache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+"

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.cache = set(), [], None

        def set_memory_pool_limit(self, pool, size):
            self.workspace = size

        def set_flag(self, flag):
            self.flags.add(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile.shapes)
            return len(self.profiles) - 1

        def create_timing_cache(self, blob):
            return Cache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(f"cache:{cache.blob!r}")
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(f"build:{sorted(config.flags)}:{len(config.profiles)}")
            header = json.dumps({"profiles": config.profiles}).encode()
            return len(header).to_bytes(4, "little") + header + network.model.SerializeToString()

    class Engine:
        def __init__(self, plan):
            size = int.from_bytes(plan[:4], "little")
            self.profiles = json.loads(plan[4 : 4 + size])["profiles"]
            model = onnx.load_from_string(plan[4 + size :])
            self.session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            self.io = [("frames", "input", "uint8"), ("anomaly_map", "output", "float32"), ("score", "output", "float32")]

        num_io_tensors = 3

        @property
        def num_optimization_profiles(self):
            return len(self.profiles)

        def get_tensor_name(self, i):
            return self.io[i][0]

        def get_tensor_mode(self, name):
            return next(m for n, m, _ in self.io if n == name)

        def get_tensor_dtype(self, name):
            return next(d for n, _, d in self.io if n == name)

        def get_tensor_profile_shape(self, name, profile):
            return list(self.profiles[profile][1:])

        def create_execution_context(self):
            return ExecutionContext(self)

    class ExecutionContext:
        def __init__(self, engine):
            self.engine, self.addresses, self.shape, self.profile = engine, {}, None, 0

        def set_optimization_profile_async(self, index, stream_handle):
            self.profile = index
            return index < len(self.engine.profiles)

        def set_tensor_address(self, name, address):
            self.addresses[name] = address

        def set_input_shape(self, name, shape):
            lo, _, hi = self.engine.profiles[self.profile][1:]
            self.shape = tuple(shape)
            return all(a <= s <= b for a, s, b in zip(lo, shape, hi))

        def execute_async_v3(self, stream_handle):
            n = self.shape[0]
            frames = memory[self.addresses["frames"]][: int(np.prod(self.shape))].reshape(self.shape)
            amap, score = self.engine.session.run(None, {"frames": frames})
            for name, out in (("anomaly_map", amap), ("score", score)):
                flat = out.astype(np.float32).reshape(-1).view(np.uint8)
                memory[self.addresses[name]][: flat.size] = flat
            calls.append(f"exec:{self.profile}:{n}")
            return True

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            return Engine(bytes(plan))

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    return trt, pycuda, calls, memory


@pytest.fixture
def fake_stack(monkeypatch):
    def install(**kw):
        trt, pycuda, calls, memory = make_fake_stack(**kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setitem(sys.modules, "pycuda", pycuda)
        monkeypatch.setitem(sys.modules, "pycuda.driver", pycuda.driver)
        return calls, memory

    return install


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    import shutil

    shutil.copytree(tiny_bundle, tmp_path / "b")
    return load_bundle(tmp_path / "b")


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(11).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)


def ort_reference(bundle, frames):
    session = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"frames": frames})


def test_fake_trt_build_then_load_and_pipeline(fake_stack, bundle_copy, frames):
    calls, memory = fake_stack()
    from edge.backends.tensorrt import TensorRTBackend, build_engine

    path, record = build_engine(bundle_copy, fp16=True, max_batch=4, profiles=2)
    assert path.parent == bundle_copy.engines_dir and path.name.startswith("fake-gpu-80gb-sm90-trt10-3-0-fp16-32x32x3-b1-4-p2")
    assert read_record(path) == record and record.model_id == bundle_copy.model_id and record.opt_batch == 4
    assert "parse:['Cast']" in calls  # the uint8 input is cast before the transpose
    assert "build:['fp16']:2" in calls and "cache:b''" in calls
    device = DeviceInfo(gpu_name="Fake GPU 80GB", compute_capability="9.0", tensorrt_version="10.3.0")
    assert timing_cache_path(bundle_copy.engines_dir, device).read_bytes() == b"+"
    build_engine(bundle_copy, fp16=False, max_batch=4)  # the second build starts from the saved cache
    assert "cache:b'+'" in calls

    backend = TensorRTBackend(bundle_copy, max_batch=4, in_flight=2, build_missing=False)
    try:
        assert backend.plan == path and backend.name == "tensorrt"
        ref_map, ref_score = ort_reference(bundle_copy, frames)
        amap, score = backend.infer(frames)  # 4 + 4 + 1 over two slots
        np.testing.assert_allclose(amap, ref_map, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(score, ref_score, rtol=1e-6, atol=1e-7)
        assert [c for c in calls if c.startswith("exec")] == ["exec:0:4", "exec:1:4", "exec:0:1"]  # profile per slot
        t1, t2 = backend.submit(frames[:2]), backend.submit(frames[2:5])
        m2, s2, times = backend.collect_timed(t2)
        np.testing.assert_allclose(s2, ref_score[2:5], rtol=1e-6)
        assert times.count == 3 and min(times.h2d_ms, times.compute_ms, times.d2h_ms) >= 0
        np.testing.assert_allclose(backend.collect(t1)[1], ref_score[:2], rtol=1e-6)
    finally:
        backend.close()
    assert memory == {} and "detach" in calls  # every device buffer freed, context released


def test_fake_trt_builds_on_first_start(fake_stack, bundle_copy, frames):
    calls, _ = fake_stack()
    from edge.backends import open_backend

    backend = open_backend(bundle_copy, "tensorrt", max_batch=2)
    try:
        assert any(c.startswith("build:['fp16']:2") for c in calls)
        assert backend.infer(frames[:3])[1].shape == (3,)
    finally:
        backend.close()
    calls.clear()
    backend = open_backend(bundle_copy, "tensorrt", max_batch=2)  # found now: no second build
    backend.close()
    assert not any(c.startswith("build") for c in calls)


def test_fake_trt_refuses_foreign_engine(fake_stack, bundle_copy):
    fake_stack(gpu_name="Fake GPU 40GB", cc=(8, 0))
    from edge.backends.tensorrt import TensorRTBackend, build_engine

    foreign, _ = build_engine(bundle_copy, max_batch=4)
    fake_stack(gpu_name="Fake GPU 80GB", cc=(9, 0), version="10.4.0")  # another box, another TensorRT
    with pytest.raises(EngineError, match=r"no TensorRT engine .* fits .*built for GPU Fake GPU 40GB \(sm 8.0\).*TensorRT 10.3.0.*ssae edge build-engine"):
        TensorRTBackend(bundle_copy, max_batch=4, build_missing=False)
    with pytest.raises(EngineError, match="built for GPU Fake GPU 40GB.*rebuild it on this device"):
        TensorRTBackend(bundle_copy, max_batch=4, engine=foreign)


def test_fake_trt_refuses_too_few_profiles(fake_stack, bundle_copy):
    fake_stack()
    from edge.backends.tensorrt import TensorRTBackend, build_engine

    build_engine(bundle_copy, max_batch=4, profiles=1)
    with pytest.raises(EngineError, match="1 optimisation profile"):
        TensorRTBackend(bundle_copy, max_batch=4, in_flight=2, build_missing=False)
    TensorRTBackend(bundle_copy, max_batch=4, in_flight=1, build_missing=False).close()


# -- the real stack -----------------------------------------------------------------------------------


def real_stack():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed here")
    cuda = pytest.importorskip("pycuda.driver", reason="pycuda is not installed here")
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            pytest.skip("no CUDA device")
    except cuda.Error as e:
        pytest.skip(f"CUDA unusable: {e}")
    return trt


@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True])
def test_real_trt_matches_onnxruntime(bundle_copy, frames, fp16):
    real_stack()
    from edge.backends.tensorrt import TensorRTBackend, build_engine

    path, record = build_engine(bundle_copy, fp16=fp16, max_batch=4)
    backend = TensorRTBackend(bundle_copy, max_batch=4, fp16=fp16, build_missing=False)
    try:
        ref_map, ref_score = ort_reference(bundle_copy, frames)
        amap, score = backend.infer(frames)
        tol = 1e-2 if fp16 else 1e-4
        np.testing.assert_allclose(score, ref_score, rtol=tol, atol=1e-6)
        np.testing.assert_allclose(amap, ref_map, rtol=tol, atol=1e-5)
        t = backend.submit(frames[:4])
        assert backend.collect_timed(t)[2].compute_ms > 0
    finally:
        backend.close()
