"""Engine keys, sidecars and refusals: the pure-Python half of the TensorRT path (no TensorRT needed)."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from edge.backends.engine_cache import (
    DeviceInfo,
    EngineError,
    EngineRecord,
    check_engine,
    engine_key,
    find_engine,
    key_name,
    plan_path,
    read_record,
    sidecar_path,
    timing_cache_path,
    write_engine,
)
from edge.manifest import InputSpec

H100 = DeviceInfo(gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0", tensorrt_version="10.3.0")
A100 = DeviceInfo(gpu_name="NVIDIA A100-SXM4-40GB", compute_capability="8.0", tensorrt_version="10.3.0")
SPEC = InputSpec(height_px=256, width_px=256, channels=3)
MODEL = "ab" * 32


def record_for(key, plan: bytes, model_id: str = MODEL) -> EngineRecord:
    return EngineRecord(
        key=key, model_id=model_id, plan_sha256=hashlib.sha256(plan).hexdigest(), opt_batch=key.max_batch, workspace_mb=1024, built="2026-01-01T00:00:00+00:00"
    )


def test_key_names_every_field():
    key = engine_key(H100, SPEC, precision="fp16", max_batch=32, profiles=2)
    assert key_name(key) == "nvidia-h100-80gb-hbm3-sm90-trt10-3-0-fp16-256x256x3-b1-32-p2"
    others = [
        engine_key(A100, SPEC, precision="fp16", max_batch=32),
        engine_key(DeviceInfo(gpu_name=H100.gpu_name, compute_capability="9.0", tensorrt_version="10.4.0"), SPEC, precision="fp16", max_batch=32),
        engine_key(H100, SPEC, precision="fp32", max_batch=32),
        engine_key(H100, InputSpec(height_px=128, width_px=256), precision="fp16", max_batch=32),
        engine_key(H100, SPEC, precision="fp16", max_batch=16),
        engine_key(H100, SPEC, precision="fp16", max_batch=32, profiles=3),
    ]
    assert len({key_name(k) for k in others} | {key_name(key)}) == 7
    assert timing_cache_path("/b/engines", H100).name == "timing-nvidia-h100-80gb-hbm3-sm90-trt10-3-0.cache"


def test_key_validation():
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"gpu_name": "x", "compute_capability": "nine", "tensorrt_version": "10"}, DeviceInfo)
    with pytest.raises((ValueError, msgspec.ValidationError), match="min_batch"):
        msgspec.convert(
            {**msgspec.to_builtins(engine_key(H100, SPEC, precision="fp16", max_batch=4)), "min_batch": 8}, type(engine_key(H100, SPEC, precision="fp16", max_batch=4))
        )


def test_write_then_check_round_trip(tmp_path):
    key = engine_key(H100, SPEC, precision="fp16", max_batch=8)
    plan = b"\x00plan bytes" * 100
    path = write_engine(tmp_path / "engines", record_for(key, plan), plan)
    assert path == plan_path(tmp_path / "engines", key) and path.read_bytes() == plan
    assert read_record(path).key == key
    assert check_engine(path, key, MODEL).plan_sha256 == hashlib.sha256(plan).hexdigest()
    # A smaller request is served by the bigger plan.
    assert check_engine(path, engine_key(H100, SPEC, precision="fp16", max_batch=4, profiles=1), MODEL).key == key


@pytest.mark.parametrize(
    "want, model_id, message",
    [
        (engine_key(A100, SPEC, precision="fp16", max_batch=8), MODEL, "built for GPU NVIDIA H100 80GB HBM3 \\(sm 9.0\\), this is NVIDIA A100"),
        (
            engine_key(DeviceInfo(gpu_name=H100.gpu_name, compute_capability="9.0", tensorrt_version="10.5.0"), SPEC, precision="fp16", max_batch=8),
            MODEL,
            "built with TensorRT 10.3.0, this is TensorRT 10.5.0",
        ),
        (engine_key(H100, SPEC, precision="fp16", max_batch=8), "cd" * 32, "built from model abababababab…, the bundle's model is cdcdcdcdcdcd…"),
        (engine_key(H100, SPEC, precision="fp32", max_batch=8), MODEL, "precision fp16, wanted fp32"),
        (engine_key(H100, SPEC, precision="fp16", max_batch=16), MODEL, "batch range 1..8 does not cover 1..16"),
        (engine_key(H100, SPEC, precision="fp16", max_batch=8, profiles=3), MODEL, "2 optimisation profile"),
        (engine_key(H100, InputSpec(height_px=128, width_px=128), precision="fp16", max_batch=8), MODEL, "input 256x256x3, the bundle's is 128x128x3"),
    ],
)
def test_mismatch_refused_with_rebuild_hint(tmp_path, want, model_id, message):
    key = engine_key(H100, SPEC, precision="fp16", max_batch=8)
    plan = b"plan"
    path = write_engine(tmp_path, record_for(key, plan), plan)
    with pytest.raises(EngineError, match=message) as info:
        check_engine(path, want, model_id, bundle_hint="bundles/brick")
    assert "rebuild it on this device with `ssae edge build-engine bundles/brick`" in str(info.value)
    assert "\n" not in str(info.value)


def test_corrupt_or_orphan_plan_refused(tmp_path):
    key = engine_key(H100, SPEC, precision="fp16", max_batch=8)
    path = write_engine(tmp_path, record_for(key, b"good plan"), b"good plan")
    path.write_bytes(b"truncated")
    with pytest.raises(EngineError, match="does not match the sha256"):
        check_engine(path, key, MODEL)
    sidecar_path(path).write_text("{broken")
    with pytest.raises(EngineError, match="unreadable"):
        check_engine(path, key, MODEL)
    sidecar_path(path).unlink()
    with pytest.raises(EngineError, match="json is missing"):
        check_engine(path, key, MODEL)
    with pytest.raises(EngineError, match="missing"):
        check_engine(tmp_path / "nothing.plan", key, MODEL)


def test_find_prefers_exact_then_smallest_cover(tmp_path):
    want = engine_key(H100, SPEC, precision="fp16", max_batch=8)
    assert find_engine(tmp_path / "none", want, MODEL) == (None, [])
    for key in (engine_key(H100, SPEC, precision="fp16", max_batch=32), engine_key(H100, SPEC, precision="fp16", max_batch=16)):
        write_engine(tmp_path, record_for(key, b"p"), b"p")
    foreign = engine_key(A100, SPEC, precision="fp16", max_batch=8)
    write_engine(tmp_path, record_for(foreign, b"p"), b"p")
    found, rejected = find_engine(tmp_path, want, MODEL)
    assert found.name.endswith("-b1-16-p2.plan")
    assert len(rejected) == 1 and "A100" in rejected[0]
    write_engine(tmp_path, record_for(want, b"p"), b"p")
    assert find_engine(tmp_path, want, MODEL)[0] == plan_path(tmp_path, want)
    # Another model: nothing fits, and each plan says why.
    found, rejected = find_engine(tmp_path, want, "ef" * 32)
    assert found is None and len(rejected) == 4 and all("built from model" in r for r in rejected)
