"""The edge daemon's config: one TOML file, decoded straight into frozen msgspec Structs.

The types are the validation (ranges in `Meta`, cross-field checks in `__post_init__`), and unknown keys
are refused so a typo fails loudly. `load_config` turns msgspec's terse errors into one line that names
the file, the field, the value and the fix:

    edge.toml: cameras[1].queue_size = 0 is below 1; set 1 or more

Relative paths (bundle, sources, archive) are taken relative to the daemon's working directory, the
way every other command-line tool reads them; systemd units should use absolute paths.

A camera's `queue` policy, when not set, follows its source: "all" for a file or folder (a recording is
read faster than it is judged, so "latest" would skip most of it), "latest" for a live camera (device
index, /dev/videoN, a URL or a GStreamer pipeline: the freshest frame wins). A `queue` that is set is
always honoured; `CameraConfig.policy` is the one in force.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from edge.errors import UserError
from edge.daemon.recipes import RecipeConfig, check_recipes, recipe_list
from edge.files import read_config_file
from edge.security import SecurityConfig
from edge.strict import Strict

CameraId = Annotated[str, Meta(pattern=r"^[a-z0-9_-]+$", max_length=64)]
Seconds = Annotated[float, Meta(gt=0, le=86400)]
ENDPOINT_RE = re.compile(r"^(tcp|ipc|inproc|ws|wss)://\S+$")
DEFAULT_MAX_BATCH = {"cpu": 4, "gpu": 8}  # max_batch when the config leaves it out (see DaemonConfig.max_batch)


class CropConfig(Strict, kw_only=True):
    """The part of the camera frame the model sees, in camera pixels, before the resize to the model input."""

    x: Annotated[int, Meta(ge=0)] = 0
    y: Annotated[int, Meta(ge=0)] = 0
    w: Annotated[int, Meta(ge=1)]
    h: Annotated[int, Meta(ge=1)]


class CameraConfig(Strict, kw_only=True):
    id: CameraId  # becomes the topic frame.<id>
    source: str  # device index ("0"), /dev/videoN, video file, rtsp:// or http:// URL, or a folder of images
    loop: bool = False  # files and folders: start again at the end (a demo loop); live sources ignore it
    queue: Literal["latest", "all"] | None = None  # "all": every part counts, capture waits; unset: see `policy`
    queue_size: Annotated[int, Meta(ge=1, le=256)] = 4  # frames held between capture and inference
    crop: CropConfig | None = None  # None: the whole frame
    resize: bool = True  # false: a frame whose (cropped) size differs from the model input is judged "unknown"
    pace_fps: Annotated[float, Meta(ge=0, le=10000)] = 0.0  # files/folders: deliver at this rate like a live camera; 0 = as fast as the queue takes
    capture_api: Literal["auto", "ffmpeg", "gstreamer", "v4l2"] = "auto"  # OpenCV backend; "gstreamer" takes a pipeline as source
    props: dict[str, float] = {}  # OpenCV CAP_PROP_* set after open, e.g. {FRAME_WIDTH = 1280, FPS = 30}
    open_timeout_s: Seconds = 10.0  # URL streams: give up opening after this long
    read_timeout_s: Seconds = 5.0  # URL streams: give up one read after this long
    stale_after_s: Seconds = 5.0  # live sources: no new frame for this long -> drop the connection, reconnect
    backoff_initial_s: Seconds = 0.5  # first retry delay after a failure; doubles per failure
    backoff_max_s: Seconds = 30.0  # retry delay cap: a camera that comes back is picked up within this
    give_up_after: Annotated[int, Meta(ge=0)] = 0  # failed attempts in a row before state "failed"; 0 = retry forever

    @property
    def kind(self) -> Literal["device", "stream", "path"]:
        """device index or /dev/videoN, a URL or GStreamer pipeline (both live), or a file or folder (finite)."""
        if self.source.isdigit() or self.source.startswith("/dev/video"):
            return "device"
        if "://" in self.source or self.capture_api == "gstreamer":
            return "stream"
        return "path"

    @property
    def policy(self) -> Literal["latest", "all"]:
        """The queue policy in force: `queue` when set, else "all" for files and folders, "latest" for live sources."""
        if self.queue is not None:
            return self.queue
        return "all" if self.kind == "path" else "latest"

    def __post_init__(self):
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError(
                f"backoff_initial_s = {self.backoff_initial_s} exceeds backoff_max_s = {self.backoff_max_s}; "
                "make the first delay the smaller one"
            )
        for name in self.props:
            if not name.isupper() or not name.replace("_", "").isalnum():
                raise ValueError(f"props key {name!r} is not an OpenCV property name; write it like FRAME_WIDTH (CAP_PROP_ without the prefix)")


class PublishConfig(Strict, kw_only=True):
    endpoints: Annotated[list[str], Meta(min_length=1)] = msgspec.field(default_factory=lambda: ["tcp://127.0.0.1:5555"])  # bound by the daemon; loopback by default
    heartbeat_s: Annotated[float, Meta(ge=0.05, le=60)] = 1.0  # health.<name> period; subscribers call 3 missed periods "down"
    sndhwm: Annotated[int, Meta(ge=1, le=1_000_000)] = 1000  # messages queued per subscriber before ZeroMQ drops
    linger_ms: Annotated[int, Meta(ge=0, le=60_000)] = 1000  # at exit, time to flush queued messages (never forever)
    # Kernel send buffer per subscriber connection; 0 = the OS default (often MBs). A small one makes a stalled
    # subscriber reach sndhwm (and lose its own messages) within moments instead of queueing seconds of old verdicts.
    sndbuf_bytes: Annotated[int, Meta(ge=0, le=64 << 20)] = 0
    queue_size: Annotated[int, Meta(ge=1, le=10_000)] = 256  # messages between inference and the publisher thread
    mask: Literal["none", "raw", "png"] = "raw"  # mask frame encoding; "none" sends an empty frame
    # What the mask frame carries: "mask" the binary mask (schema 1 subscribers read it); "map" the 8-bit quantised
    # anomaly map instead (MaskInfo.kind = "map"; needs schema-2 subscribers); "both" the mask, and the map as a
    # fourth part described by FrameHeader.map (old subscribers ignore it)
    mask_kind: Literal["mask", "map", "both"] = "mask"
    # "drop-for-that-subscriber": ZeroMQ skips a full subscriber only (it sees a seq gap; others unaffected).
    # "drop-and-count": a full subscriber makes the daemon drop the message for all and report it in `dropped`
    # and the metrics; for a single consumer (the PLC adapter) only, as one stalled client starves the rest.
    on_full_subscriber: Literal["drop-for-that-subscriber", "drop-and-count"] = "drop-for-that-subscriber"
    wait_for_subscriber_s: Annotated[float, Meta(ge=0, le=86400)] = 0.0  # hold capture until a frame subscriber joins (0 = don't)

    def __post_init__(self):
        for i, endpoint in enumerate(self.endpoints):
            if not ENDPOINT_RE.match(endpoint):
                raise ValueError(f"endpoints[{i}] = {endpoint!r} is not a ZeroMQ endpoint; write it like tcp://127.0.0.1:5555")
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ValueError("endpoints lists the same endpoint twice; keep one")


class PostprocessConfig(Strict, kw_only=True):
    min_region_px: Annotated[int, Meta(ge=1)] = 4  # smaller connected regions are noise, not reported
    max_regions: Annotated[int, Meta(ge=0, le=1000)] = 16  # largest first; bounds the header size


class MetricsConfig(Strict, kw_only=True):
    port: Annotated[int, Meta(ge=0, le=65535)] | None = None  # Prometheus /metrics; absent = no server, 0 = any free port
    host: str = "127.0.0.1"  # local only by default: metrics are not meant for the plant network


class ControlConfig(Strict, kw_only=True):
    endpoint: str  # REP endpoint for reload / apply / status, e.g. tcp://127.0.0.1:5556

    def __post_init__(self):
        if not ENDPOINT_RE.match(self.endpoint):
            raise ValueError(f"endpoint = {self.endpoint!r} is not a ZeroMQ endpoint; write it like tcp://127.0.0.1:5556")


class ArchiveConfig(Strict, kw_only=True):
    dir: str  # created if missing; the only place the daemon writes
    quota_mb: Annotated[float, Meta(gt=0)]  # oldest archived frames are deleted first beyond this
    # "review" frames exist only with a calibrated uncertain band: they are the ones an operator should look at
    verdicts: Annotated[list[Literal["defect", "review", "unknown", "ok"]], Meta(min_length=1)] = msgspec.field(default_factory=lambda: ["defect", "review"])
    queue_size: Annotated[int, Meta(ge=1, le=1000)] = 16  # frames waiting to be written; beyond it they are skipped and counted


class DriftConfig(Strict, kw_only=True):
    """Scores of parts judged good, per camera, against the calibration's good-score band (edge/daemon/drift.py)."""

    window: Annotated[int, Meta(ge=0, le=100_000)] = 200  # the last N "ok" parts per camera; 0 = no drift check
    quantile: Annotated[float, Meta(gt=0, lt=1)] = 0.9  # of their scores; 0.9: sees a shift before the threshold does


class GpuConfig(Strict, kw_only=True):
    """Options of the NVIDIA backends (backend = "tensorrt" or "torch-cuda"); onnxruntime takes none."""

    device: str = "cuda"  # "cuda:N" picks a GPU; "cpu": torch-cuda's pipeline on the CPU (tests, no GPU)
    precision: Literal["fp16", "fp32", "bf16"] | None = None  # absent: fp16 on a GPU, fp32 on the CPU; bf16 is torch-cuda only
    in_flight: Annotated[int, Meta(ge=1, le=8)] = 2  # batches on the device at once; 2 overlap upload, compute and download
    cuda_graphs: bool = False  # torch-cuda on a GPU: replay captured CUDA graphs (less launch overhead at small batches)


class DaemonConfig(Strict, kw_only=True):
    bundle: str = ""  # the folder with model.onnx and manifest.json; or list [[recipes]] instead
    recipes: list[RecipeConfig] = []  # several bundles, one per product; switched without a restart (edge/daemon/recipes.py)
    recipe: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]*$", max_length=64)] = ""  # the recipe to start with (default: the first); with a single bundle, its name (default "default")
    cameras: Annotated[list[CameraConfig], Meta(min_length=1)]
    name: CameraId = "edge"  # daemon id: heartbeats go to health.<name>
    backend: Literal["onnxruntime", "tensorrt", "torch-cuda"] = "onnxruntime"
    threads: Annotated[int, Meta(ge=0, le=1024)] = 0  # inference threads; 0 = the cores this process may use (its CPU affinity)
    # onnxruntime: let idle inference threads busy-wait for the next piece of work (ONNX Runtime's own default).
    # Off: on a box with few cores spinning threads burn the cores that decode, judging, publishing and the
    # subscribers need, and beside any other busy process inference collapses. On only for a box given to it alone.
    spin: bool = False
    # Frames per inference call, gathered across cameras; absent: 4 on onnxruntime (on a CPU a bigger batch
    # gains nothing and each frame waits for the whole batch), 8 on tensorrt / torch-cuda (a GPU needs batches).
    # The worker never waits to fill a batch unless batch_wait_ms says so: a slow live camera gets batches of 1.
    max_batch: Annotated[int, Meta(ge=1, le=256)] | None = None
    batch_wait_ms: Annotated[float, Meta(ge=0, le=1000)] = 0.0  # wait this long to fill a batch; 0 = take what is ready (latency first)
    image_threshold: Annotated[float, Meta(ge=0)] | None = None  # overrides the bundle's calibration
    pixel_threshold: Annotated[float, Meta(ge=0)] | None = None  # mask threshold; default: the calibration's, else image_threshold
    drain_timeout_s: Seconds = 10.0  # on SIGTERM, time to finish in-flight frames before giving up
    publish: PublishConfig = PublishConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    metrics: MetricsConfig = MetricsConfig()
    control: ControlConfig | None = None  # absent: no control endpoint (SIGHUP still reloads)
    archive: ArchiveConfig | None = None  # absent: nothing written to disk
    security: SecurityConfig = SecurityConfig()  # CURVE on the stream and the control endpoint (edge/security.py)
    gpu: GpuConfig = GpuConfig()  # backend = "tensorrt" / "torch-cuda": device, precision, batches in flight
    drift: DriftConfig = DriftConfig()  # good-part scores against the calibration (heartbeat, metrics, log)

    def __post_init__(self):
        self._check_gpu()
        if self.max_batch is None:  # resolved here, so every reader sees a number
            msgspec.structs.force_setattr(self, "max_batch", DEFAULT_MAX_BATCH["cpu" if self.backend == "onnxruntime" else "gpu"])
        check_recipes(self.bundle, self.recipes, self.recipe, self.image_threshold is not None or self.pixel_threshold is not None)
        seen: set[str] = set()
        for i, camera in enumerate(self.cameras):
            if camera.id in seen:
                raise ValueError(f"cameras[{i}].id = {camera.id!r} is used twice; give every camera its own id (it is its topic)")
            seen.add(camera.id)
        if self.control is not None and not self.security.curve and not _local(self.control.endpoint):
            raise ValueError(
                f"control.endpoint = {self.control.endpoint!r} would let anyone on the network reload the model; "
                "bind it to 127.0.0.1 (or ipc://) or set security.curve = true"
            )
        wildcard = self.control is not None and self.control.endpoint.endswith((":*", ":0"))  # two free ports, not one
        if self.control is not None and not wildcard and self.control.endpoint in self.publish.endpoints:
            raise ValueError(f"control.endpoint = {self.control.endpoint!r} is also a publish endpoint; give it its own port")

    @property
    def recipe_list(self) -> list[RecipeConfig]:
        """Every recipe in order (a single bundle is one); a PLC's recipe number n is recipe_list[n - 1]."""
        return recipe_list(self.bundle, self.recipes, self.recipe, self.image_threshold, self.pixel_threshold)

    @property
    def start_recipe(self) -> RecipeConfig:
        return next((r for r in self.recipe_list if r.name == self.recipe), self.recipe_list[0])

    def _check_gpu(self) -> None:
        gpu = self.gpu
        if self.spin and self.backend != "onnxruntime":
            raise ValueError(f'spin = true applies to backend = "onnxruntime" (the {self.backend} backend runs no CPU thread pool); remove it')
        if self.backend == "onnxruntime":
            if gpu != GpuConfig():
                raise ValueError('gpu.* applies to backend = "tensorrt" or "torch-cuda"; remove the [gpu] table or choose one of those backends')
            return
        if not re.fullmatch(r"cuda(:[0-9]+)?|cpu", gpu.device):
            raise ValueError(f'gpu.device = "{gpu.device}" is not a device; write "cuda", "cuda:N" (N the GPU index) or "cpu"')
        if gpu.device == "cpu" and self.backend == "tensorrt":
            raise ValueError('gpu.device = "cpu" is for backend = "torch-cuda" only (TensorRT needs a GPU); set "cuda" or "cuda:N"')
        if gpu.device == "cpu" and gpu.precision == "fp16":
            raise ValueError('gpu.precision = "fp16" needs a GPU; with gpu.device = "cpu" use "fp32" or "bf16"')
        if gpu.device == "cpu" and gpu.cuda_graphs:
            raise ValueError('gpu.cuda_graphs = true needs a GPU; set it false with gpu.device = "cpu"')
        if self.backend == "tensorrt" and gpu.precision == "bf16":
            raise ValueError('gpu.precision = "bf16" is for backend = "torch-cuda"; TensorRT engines are built "fp16" or "fp32"')
        if self.backend == "tensorrt" and gpu.cuda_graphs:
            raise ValueError('gpu.cuda_graphs is for backend = "torch-cuda" (TensorRT launches its own kernels); remove it')


def _local(endpoint: str) -> bool:
    """True for endpoints only this machine can reach: ipc://, inproc://, tcp on a loopback address."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = re.sub(r"^\w+://", "", endpoint).rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]", "::1") or host.startswith("127.")


# ---------------------------------------------------------------------------------------------------
# Loading, and errors a person at the line can act on.


def load_config(path: str | Path) -> DaemonConfig:
    """Read and validate a TOML config; every failure is a UserError naming file, field, value and fix."""
    path = Path(path)
    text = read_config_file(path, "configs/edge/line.example.toml")
    try:
        raw = msgspec.toml.decode(text)
    except msgspec.DecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e}); fix that line") from None
    return config_from_dict(raw, origin=str(path))


def config_from_dict(raw: dict, origin: str = "config") -> DaemonConfig:
    """Validate a raw mapping (from TOML or built by quick mode); `origin` prefixes every error."""
    try:
        return msgspec.convert(raw, type=DaemonConfig)
    except msgspec.ValidationError as e:
        raise UserError(f"{origin}: {explain(str(e), raw)}") from None


def explain(message: str, raw: object) -> str:
    """Rewrite msgspec's "Expected `int` >= 1 - at `$.cameras[1].queue_size`" for a person."""
    what, _, where = message.rpartition(" - at `")
    if not _:
        what, where = message, "$`"
    tokens = _tokens(where.rstrip("`"))
    field = _display(tokens)
    tp = _resolve(DaemonConfig, tokens)
    value = _lookup(raw, tokens)
    shown = f"{field} = {_toml(value)}" if value is not _MISSING else field

    if m := re.match(r"Object missing required field `(\w+)`", what):
        name = _display(tokens + [m[1]])
        return f"{name} is missing; add it (see configs/edge/line.example.toml)"
    if m := re.match(r"Object contains unknown field `(\w+)`", what):
        name = _display(tokens + [m[1]])
        known = _field_names(tp)
        close = difflib.get_close_matches(m[1], known, n=1, cutoff=0.75)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys here: {', '.join(known)}"
        return f"{name} is not a known key; remove it or fix the spelling ({hint})"
    if m := re.match(r"Expected `(\w+)` (>=|>|<=|<) ([-\d.e]+)", what):
        bound = m[3]
        if m[2] in (">=", ">"):
            fix = f"set {bound} or more" if m[2] == ">=" else f"set more than {bound}"
            return f"{shown} is {'below' if m[2] == '>=' else 'not above'} {bound}; {fix}"
        fix = f"set {bound} or less" if m[2] == "<=" else f"set less than {bound}"
        return f"{shown} is {'above' if m[2] == '<=' else 'not below'} {bound}; {fix}"
    if m := re.match(r"Expected `array` of length >= (\d+)", what):
        return f"{shown} is empty; list at least {m[1]}"
    if m := re.match(r"Expected `str` matching regex '(.+)'", what):
        return f"{shown} is not allowed; use lower-case letters, digits, '_' and '-' only"
    if what.startswith("Invalid enum value"):
        choices = ", ".join(repr(c) for c in _literal_choices(tp))
        return f"{shown} is not one of {choices}; use one of them"
    if m := re.match(r"Expected `(.+?)`, got `(\w+)`", what):
        return f"{shown} is a {_toml_type(m[2])}; write a {_toml_type(m[1])}"
    # A __post_init__ check: its message already names the key and the fix.
    return f"{field}: {what}" if tokens else what


_MISSING = object()


def _tokens(path: str) -> list[str | int]:
    """"$.cameras[1].crop.w" -> ["cameras", 1, "crop", "w"]; "[...]" (a dict key) stays a string."""
    out: list[str | int] = []
    for name, index in re.findall(r"\.(\w+)|\[([^\]]*)\]", path):
        out.append(name if name else (int(index) if index.isdigit() else index))
    return out


def _display(tokens: list[str | int]) -> str:
    text = ""
    for t in tokens:
        text += f"[{t}]" if isinstance(t, int) or t == "..." else (f".{t}" if text else t)
    return text or "(top level)"


def _lookup(raw: object, tokens: list[str | int]) -> object:
    for t in tokens:
        try:
            raw = raw[t]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return raw


def _unwrap(tp: object) -> object:
    """Strip Annotated and `| None` so that the struct, list or Literal shows."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _resolve(tp: object, tokens: list[str | int]) -> object:
    """The annotated type at a path, for the list of known keys or allowed values."""
    hints_cache: dict[type, dict] = {}
    for t in tokens:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct) and isinstance(t, str):
            hints = hints_cache.setdefault(tp, typing.get_type_hints(tp, include_extras=True))
            tp = hints.get(t)
        elif typing.get_origin(tp) in (list, dict):
            tp = typing.get_args(tp)[-1]
        else:
            return None
    return _unwrap(tp)


def _field_names(tp: object) -> list[str]:
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return list(tp.__struct_fields__)
    return []


def _literal_choices(tp: object) -> tuple:
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) is list:
        return _literal_choices(_unwrap(typing.get_args(tp)[0]))
    return ()


def _toml(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def _toml_type(name: str) -> str:
    return {
        "str": "quoted string",
        "int": "whole number",
        "float": "number",
        "bool": "true/false",
        "array": "list [...]",
        "object": "table",
        "int | null": "whole number",
        "float | null": "number",
    }.get(name, name)
