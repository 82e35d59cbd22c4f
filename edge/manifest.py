"""The bundle manifest: the contract between train, calibrate and edge.

A bundle is a directory holding `model.onnx` and `manifest.json` (plus, on a device, `engines/`).
The manifest is versioned; unknown fields are refused so that a typo or a manifest from a newer,
incompatible writer fails loudly instead of being half-understood.

The ONNX graph takes raw frames and returns the anomaly map and score (see DESIGN.md):
    frames       uint8   (N, H, W, C)  colour order `input.color_order` (OpenCV's BGR)
    anomaly_map  float32 (N, H, W)     >= 0, Gaussian-smoothed channel-mean squared error
    score        float32 (N,)          max of anomaly_map per frame
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from edge.files import atomic_write_bytes
from edge.strict import Strict

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.onnx"
INPUT_NAME = "frames"
MAP_NAME = "anomaly_map"
SCORE_NAME = "score"


class InputSpec(Strict, kw_only=True):
    height_px: Annotated[int, Meta(ge=8, le=8192)]
    width_px: Annotated[int, Meta(ge=8, le=8192)]
    channels: Literal[1, 3] = 3
    color_order: Literal["BGR", "GRAY"] = "BGR"  # what cv2.imread / VideoCapture deliver
    dtype: Literal["uint8"] = "uint8"
    layout: Literal["NHWC"] = "NHWC"
    name: str = INPUT_NAME


class OutputSpec(Strict, kw_only=True):
    anomaly_map: str = MAP_NAME  # float32 (N, H, W)
    score: str = SCORE_NAME  # float32 (N,)


class ScoreStats(Strict, kw_only=True):
    """Summary of image scores of good samples: what a threshold is judged against."""

    count: Annotated[int, Meta(ge=0)]
    mean: float
    std: float
    p50: float
    p99: float
    max: float


class RateEvidence(Strict, kw_only=True):
    """A rate with what it rests on: `events` of `trials`, and its one-sided Clopper-Pearson upper bound."""

    events: Annotated[int, Meta(ge=0)]  # e.g. good samples above the threshold, defects at or below it
    trials: Annotated[int, Meta(ge=0)]
    rate: float  # events / trials (NaN when trials == 0)
    upper: float  # true rate <= upper with probability `confidence`
    confidence: float
    in_sample: bool = False  # True when the threshold was chosen on these same samples (optimistic)


class Calibration(Strict, kw_only=True):
    image_threshold: Annotated[float, Meta(ge=0)]  # score > threshold -> defect
    pixel_threshold: Annotated[float, Meta(ge=0)]  # map > threshold -> defect pixel
    method: str  # e.g. "good-only-order-statistic", "best-f1", "recall-at-frr"
    target_false_reject: Annotated[float, Meta(ge=0, le=1)] | None = None
    n_good: Annotated[int, Meta(ge=0)] = 0
    n_defect: Annotated[int, Meta(ge=0)] = 0
    good_stats: ScoreStats | None = None
    expected_false_reject: float | None = None
    expected_escape: float | None = None
    created: str = ""  # ISO 8601 UTC
    source: str = ""  # where the samples came from (folders or a live endpoint)
    note: str = ""
    # Added by calibrate/ (defaults keep older manifests readable):
    confidence: float | None = None  # confidence level of the rule and of the evidence below
    false_reject: RateEvidence | None = None  # good samples rejected
    escape: RateEvidence | None = None  # labelled defects passed
    auroc: float | None = None  # image AUROC of good vs labelled defects
    pixel_method: str = ""  # "mask-best-f1", "good-pixel-quantile", "kept", ...
    escape_by_type: dict[str, RateEvidence] = {}  # labelled defects passed, per defect type (subfolder name)
    # An uncertain band (None = none): review_threshold < score <= image_threshold -> verdict "review".
    review_threshold: Annotated[float, Meta(ge=0)] | None = None

    def __post_init__(self):
        if self.review_threshold is not None and not self.review_threshold < self.image_threshold:
            raise ValueError(
                f"calibration.review_threshold = {self.review_threshold} is not below image_threshold = {self.image_threshold}; "
                "the band lies under the threshold: refit it (`ssae calibrate fit --review-factor`) or remove it"
            )


class Provenance(Strict, kw_only=True):
    data: str  # dataset path as given to `ssae train fit`
    category: str | None = None
    recipe: str = "default"
    recipe_config: dict[str, object] = {}  # the whole TrainConfig as used
    seed: int = 0
    steps: int = 0
    train_seconds: float = 0.0
    code_version: str = ""
    created: str = ""
    metrics: dict[str, float] = {}  # filled in by `ssae train eval`


class Manifest(Strict, kw_only=True):
    format_version: int
    model_id: str  # sha256 hex of model.onnx; checked at load
    input: InputSpec
    outputs: OutputSpec = OutputSpec()
    provenance: Provenance
    # Default calibration from training data (may be None); `ssae calibrate fit` replaces it on site.
    calibration: Calibration | None = None
    history: list[Calibration] = []  # earlier calibrations, oldest first
    # Optional artefacts beside model.onnx, name -> sha256 (e.g. "model.pt2" for the torch-cuda backend).
    extras: dict[str, str] = {}


class BundleError(Exception):
    """A bundle failed a check; the message names the check and the fix."""


def encode_manifest(manifest: Manifest) -> bytes:
    return msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"


def write_manifest(bundle_dir: Path, manifest: Manifest) -> None:
    atomic_write_bytes(Path(bundle_dir) / MANIFEST_NAME, encode_manifest(manifest))


def read_manifest(bundle_dir: Path) -> Manifest:
    """Decode and check the format version; does not hash the model (see edge.bundle.load_bundle)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not Path(bundle_dir).is_dir():
        raise BundleError(f"bundle refused: {bundle_dir} is not a directory; pass the folder `ssae train fit --out` wrote")
    if not path.is_file():
        raise BundleError(f"bundle refused: {path} is missing; this folder is not a bundle (re-export it with `ssae train fit`)")
    raw = path.read_bytes()
    try:
        version = msgspec.json.decode(raw, type=dict).get("format_version")
    except (msgspec.DecodeError, AttributeError) as e:
        raise BundleError(f"bundle refused: {path} is not valid JSON ({e}); restore it or re-export the bundle") from e
    if version != FORMAT_VERSION:
        raise BundleError(
            f"bundle refused: {path} has format_version {version!r}, this build reads {FORMAT_VERSION}; "
            "re-export the bundle with this version of ssae"
        )
    try:
        return msgspec.json.decode(raw, type=Manifest)
    except msgspec.ValidationError as e:
        raise BundleError(f"bundle refused: {path}: {e}; re-export the bundle or fix that field") from e
