"""TensorRT engines kept beside the bundle, keyed by what makes a plan valid.

A TensorRT plan runs only on the GPU model (compute capability) and TensorRT version it was built
with, for the precision, input shape and batch range of its optimisation profiles. Each plan lives at
`BUNDLE/engines/<key>.plan` with a JSON sidecar `<key>.json` (an EngineRecord: the key fields, the
model_id of the ONNX it was built from, the plan's sha256, build time). Loading checks the sidecar
against this device and this bundle first, so a foreign or stale plan is refused with the fix
(`ssae edge build-engine BUNDLE`) instead of failing deep inside TensorRT.

Pure Python: nothing here imports TensorRT, so it is tested on any machine.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from edge.files import atomic_write_bytes, sha256_file
from edge.manifest import BundleError, InputSpec
from edge.strict import Strict

RECORD_VERSION = 1
Precision = Literal["fp16", "fp32"]
REBUILD = "rebuild it on this device with `ssae edge build-engine {bundle}`"


class EngineError(BundleError):
    """An engine plan cannot be used here; the message says why and how to rebuild."""


class DeviceInfo(Strict, kw_only=True):
    """What a plan is bound to on the machine that runs it."""

    gpu_name: str  # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: Annotated[str, Meta(pattern=r"^\d+\.\d+$")]  # "9.0"
    tensorrt_version: str  # trt.__version__, e.g. "10.3.0"


class EngineKey(Strict, kw_only=True):
    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    precision: Precision
    height_px: int
    width_px: int
    channels: int
    min_batch: Annotated[int, Meta(ge=1)] = 1
    max_batch: Annotated[int, Meta(ge=1)]
    # One optimisation profile per in-flight slot: each execution context runs concurrently on its own
    # stream, and TensorRT lets a dynamic-shape profile serve only one context at a time.
    profiles: Annotated[int, Meta(ge=1, le=8)] = 2

    def __post_init__(self):
        if self.min_batch > self.max_batch:
            raise ValueError(f"min_batch {self.min_batch} exceeds max_batch {self.max_batch}")


class EngineRecord(Strict, kw_only=True):
    """The sidecar written beside each plan."""

    record_version: int = RECORD_VERSION
    key: EngineKey
    model_id: str  # sha256 of the model.onnx the plan was built from
    plan_sha256: str
    opt_batch: int  # the batch size TensorRT tuned kernels for
    workspace_mb: int
    built: str  # ISO 8601 UTC
    build_seconds: float = 0.0


def slug(text: str) -> str:
    """Lower-case, file-name-safe: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def engine_key(device: DeviceInfo, spec: InputSpec, *, precision: Precision, max_batch: int, profiles: int = 2) -> EngineKey:
    return EngineKey(
        gpu_name=device.gpu_name,
        compute_capability=device.compute_capability,
        tensorrt_version=device.tensorrt_version,
        precision=precision,
        height_px=spec.height_px,
        width_px=spec.width_px,
        channels=spec.channels,
        max_batch=max_batch,
        profiles=profiles,
    )


def key_name(key: EngineKey) -> str:
    """File stem of a plan: every field of the key, readable in `ls engines/`."""
    cc = key.compute_capability.replace(".", "")
    return (
        f"{slug(key.gpu_name)}-sm{cc}-trt{slug(key.tensorrt_version)}-{key.precision}-"
        f"{key.height_px}x{key.width_px}x{key.channels}-b{key.min_batch}-{key.max_batch}-p{key.profiles}"
    )


def plan_path(engines_dir: Path, key: EngineKey) -> Path:
    return Path(engines_dir) / f"{key_name(key)}.plan"


def sidecar_path(plan: Path) -> Path:
    return Path(plan).with_suffix(".json")


def timing_cache_path(engines_dir: Path, device: DeviceInfo) -> Path:
    """One timing cache per GPU model and TensorRT version, shared by all builds of any precision/shape."""
    cc = device.compute_capability.replace(".", "")
    return Path(engines_dir) / f"timing-{slug(device.gpu_name)}-sm{cc}-trt{slug(device.tensorrt_version)}.cache"


def write_engine(engines_dir: Path, record: EngineRecord, plan: bytes) -> Path:
    """Plan first, sidecar last (both atomic): a sidecar never names a half-written plan."""
    engines_dir = Path(engines_dir)
    engines_dir.mkdir(parents=True, exist_ok=True)
    path = plan_path(engines_dir, record.key)
    atomic_write_bytes(path, plan)
    atomic_write_bytes(sidecar_path(path), msgspec.json.format(msgspec.json.encode(record), indent=2) + b"\n")
    return path


def read_record(plan: Path, bundle_hint: str = "BUNDLE") -> EngineRecord:
    side = sidecar_path(plan)
    if not side.is_file():
        raise EngineError(f"engine refused: {side} is missing, so {Path(plan).name} cannot be checked; {REBUILD.format(bundle=bundle_hint)}")
    try:
        return msgspec.json.decode(side.read_bytes(), type=EngineRecord)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise EngineError(f"engine refused: {side} is unreadable ({e}); {REBUILD.format(bundle=bundle_hint)}") from None


def mismatches(record: EngineRecord, want: EngineKey, model_id: str) -> list[str]:
    """Why the plan in `record` cannot serve `want` for this model; empty if it can.

    A plan with a larger batch range or more profiles than asked for still serves.
    """
    have = record.key
    out = []
    if have.gpu_name != want.gpu_name or have.compute_capability != want.compute_capability:
        out.append(f"built for GPU {have.gpu_name} (sm {have.compute_capability}), this is {want.gpu_name} (sm {want.compute_capability})")
    if have.tensorrt_version != want.tensorrt_version:
        out.append(f"built with TensorRT {have.tensorrt_version}, this is TensorRT {want.tensorrt_version}")
    if record.model_id != model_id:
        out.append(f"built from model {record.model_id[:12]}…, the bundle's model is {model_id[:12]}…")
    if have.precision != want.precision:
        out.append(f"precision {have.precision}, wanted {want.precision}")
    if (have.height_px, have.width_px, have.channels) != (want.height_px, want.width_px, want.channels):
        out.append(
            f"input {have.height_px}x{have.width_px}x{have.channels}, the bundle's is {want.height_px}x{want.width_px}x{want.channels}"
        )
    if have.min_batch > want.min_batch or have.max_batch < want.max_batch:
        out.append(f"batch range {have.min_batch}..{have.max_batch} does not cover {want.min_batch}..{want.max_batch}")
    if have.profiles < want.profiles:
        out.append(f"{have.profiles} optimisation profile(s), {want.profiles} in-flight batches need {want.profiles}")
    return out


def check_engine(plan: Path, want: EngineKey, model_id: str, bundle_hint: str = "BUNDLE", verify_hash: bool = True) -> EngineRecord:
    """The record of `plan` if it fits this device and bundle, else EngineError naming each mismatch."""
    plan = Path(plan)
    if not plan.is_file():
        raise EngineError(f"engine refused: {plan} is missing; {REBUILD.format(bundle=bundle_hint)}")
    record = read_record(plan, bundle_hint)
    problems = mismatches(record, want, model_id)
    if problems:
        raise EngineError(f"engine refused: {plan.name} was " + "; ".join(problems) + f"; {REBUILD.format(bundle=bundle_hint)}")
    if verify_hash and sha256_file(plan) != record.plan_sha256:
        raise EngineError(f"engine refused: {plan} does not match the sha256 in its sidecar (corrupt copy); {REBUILD.format(bundle=bundle_hint)}")
    return record


def find_engine(engines_dir: Path, want: EngineKey, model_id: str) -> tuple[Path | None, list[str]]:
    """The best usable plan under engines_dir (the exact key first, then the smallest that covers it).

    Returns (plan or None, reasons each other plan was passed over) so a caller that may not build
    can tell the user what it found.
    """
    engines_dir = Path(engines_dir)
    exact = plan_path(engines_dir, want)
    rejected: list[str] = []
    candidates: list[tuple[int, int, Path]] = []
    for plan in sorted(engines_dir.glob("*.plan")) if engines_dir.is_dir() else []:
        try:
            record = read_record(plan)
        except EngineError as e:
            rejected.append(str(e))
            continue
        problems = mismatches(record, want, model_id)
        if problems:
            rejected.append(f"{plan.name}: " + "; ".join(problems))
        else:
            candidates.append((plan != exact, record.key.max_batch, plan))
    if not candidates:
        return None, rejected
    return min(candidates)[2], rejected
