"""The wire: what the daemon publishes and what subscribers (PLC adapters, any language) read.

ZeroMQ PUB, multipart messages, msgpack bodies. The README's "Wire format" section is the
language-neutral description of exactly these structs; keep both in step and bump
SCHEMA_VERSION for any change a subscriber must know about.

    frame.<camera>   [topic, FrameHeader (msgpack map), mask bytes (empty when encoding == "none")
                      (, map bytes: only when header.map.encoding != "none", publish.mask_kind = "both")]
    health.<daemon>  [topic, Health (msgpack map)]

Schema 2 added, all with defaults at the end: the verdict "review" (between the two thresholds of an
uncertain band) and `FrameHeader.review_threshold`; `MaskInfo.kind` / `map_scale` / `map_offset` (an
8-bit quantised anomaly map instead of the binary mask) and `FrameHeader.map` (that map as a fourth part,
beside the mask); `CameraHealth.drift` / `drift_state` (good-part scores against the calibration).

Every body is a msgpack map with a "type" key ("frame" / "health"). Fields are only ever added, with
defaults, at the end; an older subscriber keeps working (wire structs do not forbid unknown fields).
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

SCHEMA_VERSION = 2  # 2: review band, quantised map part, drift; part_id, recipe, trigger_id; trigger counts; the active recipe; Trigger, SelectRecipe
NAN = float("nan")

Verdict = Literal["ok", "defect", "review", "unknown"]
CameraState = Literal["starting", "streaming", "reconnecting", "failed", "finished"]


class Region(msgspec.Struct, frozen=True, kw_only=True):
    """One connected defect region, in mask pixel coordinates (the model's input grid)."""

    x: int
    y: int
    w: int
    h: int
    area_px: int
    peak_score: float


class MaskInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Describes the mask frame that follows the header (or, as `FrameHeader.map`, the map frame after it)."""

    encoding: Literal["none", "raw", "png"] = "none"  # raw: uint8 row-major; 0 or 255 for a mask, codes for a map
    height_px: int = 0
    width_px: int = 0
    # Where the mask grid sits in the camera frame: the crop (x, y, w, h) that was resized to the model input.
    roi_x: int = 0
    roi_y: int = 0
    roi_w: int = 0
    roi_h: int = 0
    # Schema 2: "map" = the bytes are an 8-bit quantised anomaly map, value = map_offset + code x map_scale.
    kind: Literal["mask", "map"] = "mask"
    map_scale: float = 0.0  # anomaly units per code step (> 0 when kind == "map")
    map_offset: float = 0.0  # the value of code 0


class FrameHeader(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="frame"):
    schema_version: int
    camera: str
    seq: int  # per camera, starts at 0, +1 for every frame captured (published or dropped)
    capture_ns: int  # wall clock (time.time_ns) at grab
    publish_ns: int  # wall clock just before send
    score: float  # image score (max of the smoothed map); NaN only when the frame could not be scored
    threshold: float  # image threshold in force (NaN when uncalibrated); score > threshold -> "defect"
    # "review": review_threshold < score <= threshold (an uncertain band; only when one is calibrated)
    verdict: Verdict
    model_id: str
    regions: list[Region] = []
    dropped: int = 0  # frames of this camera dropped since the previous published frame
    mask: MaskInfo = MaskInfo()
    reason: str = ""  # why "unknown" (wrong size, backend error, uncalibrated, ...)
    pixel_threshold: float = 0.0
    source: str = ""  # file name / URL / device of the frame, for traceability
    # Schema 2:
    review_threshold: float = NAN  # lower edge of the uncertain band; NaN = no band
    map: MaskInfo = MaskInfo()  # the fourth part (publish.mask_kind = "both"): the quantised map beside the mask
    part_id: str = ""  # from the trigger this frame answers (the PLC's part id); "" for free-running frames
    recipe: str = ""  # the recipe (product) whose model judged the frame
    trigger_id: int = 0  # the daemon's number of the trigger this frame answers (per camera, from 1); 0 = not triggered


class CameraHealth(msgspec.Struct, frozen=True, kw_only=True):
    camera: str
    state: CameraState
    fps: float = 0.0
    frames_captured: int = 0
    frames_judged: int = 0
    frames_dropped: int = 0
    reconnects: int = 0
    skipped_files: int = 0
    last_error: str = ""
    # Schema 2: a rolling quantile of the scores of parts judged "ok", placed in the calibration's good-score
    # band: 0 = the calibrated good median (p50), 1 = the calibrated good p99. NaN while there is none.
    drift: float = NAN
    drift_state: str = ""  # "ok" inside 0..1, "high", "low", "warming-up"; "" = not checked (no calibrated band)
    triggers: int = 0  # triggers accepted for this camera since start
    triggers_refused: int = 0  # refused: one was still waiting for a frame (busy), or the camera was not streaming
    triggers_missed: int = 0  # accepted, but no frame was captured within the trigger's timeout


class Health(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="health"):
    schema_version: int
    daemon: str
    seq: int  # heartbeat counter; a gap means missed heartbeats
    time_ns: int
    period_s: float  # heartbeat period: a subscriber treats 3 missed periods as "inspector down"
    uptime_s: float
    backend: str
    model_id: str
    image_threshold: float
    cameras: list[CameraHealth] = []
    publish_dropped: int = 0  # messages the publisher dropped because its queue was full
    recipe: str = ""  # the active recipe
    recipes: list[str] = []  # every recipe of the config, in order: number n (a PLC's choice) is recipes[n - 1]


Message = FrameHeader | Health


# Control endpoint (REQ/REP, msgpack): reload thresholds or the bundle without dropping the stream.
class Reload(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="reload"):
    bundle: str | None = None  # None: re-read the configured bundle (new calibration, same model)


class ApplyThresholds(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="apply"):
    image_threshold: float
    pixel_threshold: float | None = None
    review_threshold: float | None = None  # lower edge of an uncertain band; None = no band


class Status(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="status"):
    pass


class Trigger(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="trigger"):
    """Inspect the next frame of `camera` captured after this request arrives; it carries part_id and the
    reply's trigger_id. One trigger per camera at a time: another while one waits is refused (busy)."""

    camera: str
    part_id: str = ""
    timeout_ms: float = 1000.0  # no frame captured within this: the trigger expires (a missed acquisition)


class SelectRecipe(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="recipe"):
    """Switch to a recipe of the config, by name or by number (1 = the first [[recipes]]), between frames."""

    name: str = ""
    number: int = 0  # used when name is ""


Request = Reload | ApplyThresholds | Status | Trigger | SelectRecipe


class Reply(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="reply"):
    ok: bool
    message: str = ""
    model_id: str = ""
    image_threshold: float = 0.0
    pixel_threshold: float = 0.0
    recipe: str = ""  # the recipe in force after the request
    trigger_id: int = 0  # Trigger: the number the answering frame's header will carry


def header_json(header: FrameHeader) -> bytes:
    """The header as indented JSON (archive, tap). JSON has no NaN: msgspec writes null, which does not read
    back as a float, so a field whose default is NaN (review_threshold) is left out while NaN and reads back as it."""
    body = msgspec.to_builtins(header)
    for name in _NAN_DEFAULTS:
        if isinstance(body.get(name), float) and math.isnan(body[name]):
            del body[name]
    return msgspec.json.format(msgspec.json.encode(body), indent=2) + b"\n"


_NAN_DEFAULTS = tuple(
    f.name for f in msgspec.structs.fields(FrameHeader) if isinstance(f.default, float) and math.isnan(f.default)
)


def frame_topic(camera: str) -> bytes:
    return f"frame.{camera}".encode()


def health_topic(daemon: str) -> bytes:
    return f"health.{daemon}".encode()
