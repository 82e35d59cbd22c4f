"""Fit a calibration: score the samples, choose thresholds by the rules, refuse what would mislead.

`decide` is the whole judgement on scores already in hand (shared by `fit` on folders and by `live`
on a daemon's stream); `fit_folders` scores image folders with the bundle and then calls it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import cv2
import msgspec
import numpy as np

from calibrate import rules
from calibrate.score import IMAGE_SUFFIXES, Scored, list_images, read_image, score_images
from edge.errors import UserError
from edge.manifest import Calibration
from edge.preprocess import FrameError, Roi

Rule = Literal["frr", "best-f1"]

MIN_GOOD_FOR_F1 = 10  # fewer good samples say nothing about where good scores end
MIN_DEFECT_FOR_F1 = 5  # fewer defects make "best F1" a coin toss


class CalibrationRefused(UserError):
    """The calibration would mislead; nothing is written unless forced. The message says why and what to do."""


class FitOptions(msgspec.Struct, frozen=True, kw_only=True):
    target_false_reject: float = 0.001
    confidence: float = 0.95
    rule: Rule = "frr"  # "frr": lowest threshold meeting the target; "best-f1": needs defects
    force: bool = False  # write even when the calibration is refused; the reasons go into its note
    crop: Roi | None = None  # the camera's crop in the edge config, so scores match the line
    backend: str = "onnxruntime"
    threads: int = 0
    batch: int = 8
    progress: bool = True
    review_factor: float | None = None  # uncertain band: review threshold = factor x image threshold (0 < factor < 1)


class PixelChoice(msgspec.Struct, frozen=True, kw_only=True):
    threshold: float
    method: str  # "mask-best-f1", "good-pixel-quantile", "kept", "image-threshold"
    detail: str


class FitResult(msgspec.Struct, frozen=True, kw_only=True):
    calibration: Calibration
    good: np.ndarray  # good image scores
    defect: np.ndarray | None  # labelled defect scores
    image_detail: str  # how the image threshold was reached
    pixel_detail: str
    warnings: list[str] = []  # refusals overridden by force, skipped or odd images
    review_detail: str = ""  # the uncertain band and what falls in it; "" without one


def decide(
    good: np.ndarray,
    defect: np.ndarray | None,
    pixel: PixelChoice | None,
    options: FitOptions,
    *,
    source: str,
    warnings: Sequence[str] = (),
    problems: Sequence[str] = (),
    defect_types: Sequence[str] = (),
) -> FitResult:
    """Choose the thresholds for these scores; raise CalibrationRefused (unless forced) or UserError.

    problems: reasons to refuse found before (e.g. by `live` in the stream), refused or forced like the others.
    defect_types: the type of each defect score (same order), for the escapes per type.
    """
    good = np.asarray(good, np.float64)
    n_good = good.size
    if n_good == 0:
        raise UserError("no good sample was scored; nothing to calibrate on (check the --good folder)")
    if defect is not None and defect.size == 0:
        raise UserError("no defective sample was scored; check the --defect folder")
    p, c = options.target_false_reject, options.confidence
    if defect_types and (defect is None or len(defect_types) != defect.size):
        raise ValueError("defect_types must name the type of every defect score")
    problems = list(problems)
    choice, method = _image_choice(good, defect, options, problems)
    area = None
    if defect is not None:
        area = rules.auroc(good, defect)
        if area < 0.5:
            problems.append(f"defects score below good samples (AUROC {area:.3f} < 0.5): the model does not separate them; check the folders or retrain")
        if choice is not None:
            missed = rules.escapes(defect, choice.threshold)
            if missed * 2 > defect.size:
                problems.append(f"most defects pass: {missed} of {defect.size} score at or below the threshold {choice.threshold:.4g}")
    if problems and not options.force:
        raise CalibrationRefused("calibration refused, nothing written: " + "; ".join(problems) + ("" if choice is None else "; --force writes it anyway"))
    assert choice is not None
    t = choice.threshold
    fr = rules.rate_evidence(rules.false_rejects(good, t), n_good, c, in_sample=choice.method == "best-f1")
    esc = None if defect is None else rules.rate_evidence(rules.escapes(defect, t), defect.size, c, in_sample=choice.method == "best-f1")
    by_type = {} if defect is None else rules.escapes_by_type(defect, list(defect_types), t, c, in_sample=choice.method == "best-f1")
    expected_fr = {"order-statistic": fr.upper, "tail-extrapolation": p}.get(choice.method, fr.rate)
    pixel = pixel or PixelChoice(threshold=t, method="image-threshold", detail="no maps: pixel threshold = image threshold")
    pixel_t, pixel_detail = pixel.threshold, pixel.detail
    if pixel_t > t:  # a frame judged defective must show where
        pixel_t, pixel_detail = t, f"{pixel.detail}; capped at the image threshold {t:.4g} so every defect frame has a mask"
    hidden = [  # a type that mostly escapes can hide in a low total: say so where the engineer looks
        f"defect type {name}: {ev.events} of {ev.trials} escape ({ev.rate:.0%}), against {esc.rate:.0%} of all defects; "
        "add samples of that type, retrain, or choose a lower threshold"
        for name, ev in by_type.items()
        if esc is not None and esc.events * 2 <= esc.trials and ev.events * 2 > ev.trials  # the total alone would not alarm
    ]
    review, review_detail = _review_band(good, defect, max(0.0, t), options.review_factor)
    all_warnings = [*warnings, *hidden, *(f"forced: {w}" for w in problems)]
    calibration = Calibration(
        image_threshold=max(0.0, t),
        pixel_threshold=max(0.0, pixel_t),
        method=method,
        target_false_reject=None if options.rule == "best-f1" else p,
        n_good=n_good,
        n_defect=0 if defect is None else int(defect.size),
        good_stats=rules.score_stats(good),
        expected_false_reject=expected_fr,
        expected_escape=None if esc is None else esc.rate,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        source=source,
        note=" | ".join([choice.detail, f"pixel: {pixel_detail}", *([review_detail] if review_detail else []), *all_warnings]),
        confidence=c,
        false_reject=fr,
        escape=esc,
        auroc=area,
        pixel_method=pixel.method,
        escape_by_type=by_type,
        review_threshold=review,
    )
    return FitResult(calibration=calibration, good=good, defect=defect, image_detail=choice.detail, pixel_detail=pixel_detail, warnings=all_warnings, review_detail=review_detail)


def _review_band(good: np.ndarray, defect: np.ndarray | None, t: float, factor: float | None) -> tuple[float | None, str]:
    """The uncertain band's lower threshold, factor x t, and what falls in it (review_threshold < score <= t)."""
    if factor is None:
        return None, ""
    if not 0 < factor < 1:
        raise UserError(f"--review-factor {factor:g} must lie between 0 and 1 (the band lies below the image threshold), e.g. 0.8")
    review = factor * t
    if not review < t:  # t == 0: no room below it
        return None, f"review band: none, the image threshold {t:.4g} leaves no room below it"
    in_band = lambda s: int(((s > review) & (s <= t)).sum())  # noqa: E731
    detail = f"review band: {factor:g} x image threshold = {review:.4g}; {in_band(good)} of {good.size} good samples fall in it"
    if defect is not None:
        detail += f", {in_band(defect)} of {defect.size} defects (verdict review instead of passing)"
    return review, detail


def _image_choice(good: np.ndarray, defect: np.ndarray | None, options: FitOptions, problems: list[str]) -> tuple[rules.Choice | None, str]:
    """The image threshold by the requested rule and the manifest's method name; appends what is wrong to problems.

    Returns no choice only when the order-statistic rule has too few samples and force is off.
    """
    if options.rule == "best-f1":
        if defect is None:
            raise UserError("--rule best-f1 needs labelled defects: pass --defect DIR, or use the default rule frr")
        if good.size < MIN_GOOD_FOR_F1 or defect.size < MIN_DEFECT_FOR_F1:
            problems.append(
                f"too few samples for best F1: {good.size} good and {defect.size} defective, need at least {MIN_GOOD_FOR_F1} and {MIN_DEFECT_FOR_F1}"
            )
        return rules.best_f1_threshold(good, defect)[0], "best-f1"
    labelled = defect is not None
    choice = rules.order_statistic_threshold(good, options.target_false_reject, options.confidence)
    if choice is not None:
        return choice, "recall-at-frr" if labelled else "good-only-order-statistic"
    problems.append(too_few_goods(good.size, options))
    if good.size < rules.MIN_TAIL_SAMPLES:
        raise CalibrationRefused(f"calibration refused, nothing written: {problems[-1]}; even a forced tail fit needs {rules.MIN_TAIL_SAMPLES}")
    if not options.force:
        return None, ""
    return rules.tail_threshold(good, options.target_false_reject), "recall-at-frr-tail-extrapolation" if labelled else "good-only-tail-extrapolation"


def too_few_goods(n_good: int, options: FitOptions) -> str:
    p, c = options.target_false_reject, options.confidence
    return (
        f"too few good samples for a false-reject rate of {p:g} at {c:.0%} confidence: {n_good} given, "
        f"{rules.min_good_samples(p, c)} needed (n >= ln(1-confidence)/ln(1-target)); add good images, or raise "
        f"--target-false-reject to {_ceil_sig(rules.lowest_supported_target(n_good, c))} (the lowest these samples back), "
        "or --force to extrapolate a fitted tail (labelled as such)"
    )


def fit_folders(bundle_dir: Path, good_dirs: Sequence[Path], defect_dirs: Sequence[Path], masks_dir: Path | None, options: FitOptions) -> tuple[FitResult, str]:
    """Score the folders with the bundle and decide; returns the result and the bundle's model id."""
    from edge.backends import open_backend
    from edge.bundle import load_bundle

    if masks_dir is not None and not defect_dirs:
        raise UserError("--masks needs --defect: masks belong to the defect images")
    if masks_dir is not None and not Path(masks_dir).is_dir():
        raise UserError(f"masks folder {masks_dir} does not exist; pass the ground_truth folder of the defect images")
    bundle = load_bundle(bundle_dir)  # first: a wrong bundle path is the first thing to fix
    good_paths = [p for d in good_dirs for p in list_images(d, role="good")]
    defect_paths = [p for d in defect_dirs for p in list_images(d, role="defect", by_type=True)]
    if options.rule == "frr" and not options.force and len(good_paths) < rules.min_good_samples(options.target_false_reject, options.confidence):
        # Refuse before minutes of scoring: no outcome of the scores could change this.
        raise CalibrationRefused(f"calibration refused, nothing written: {too_few_goods(len(good_paths), options)}")
    spec = bundle.manifest.input
    try:
        backend = open_backend(bundle, options.backend, threads=options.threads, max_batch=options.batch)
    except (ImportError, ValueError) as e:
        raise UserError(f"--backend {options.backend}: not available here ({e}); use the line's backend, or onnxruntime") from None
    try:
        common = dict(crop=options.crop, batch=options.batch, allow_mixed=options.force, skip_bad=options.force, progress=options.progress)
        largest = np.empty(0, np.float32)
        keep = rules.good_pixel_count_above(len(good_paths) * spec.height_px * spec.width_px, options.target_false_reject) + 1

        def keep_good_pixels(maps: np.ndarray) -> None:
            nonlocal largest
            largest = rules.keep_largest(largest, maps, keep)

        good = score_images(good_paths, backend, spec, on_maps=None if masks_dir else keep_good_pixels, desc="scoring good", **common)
        defect = score_images(defect_paths, backend, spec, keep_maps=masks_dir is not None, desc="scoring defects", **common) if defect_paths else None
    finally:
        backend.close()
    if masks_dir is not None and defect is not None:
        pixel = _pixel_from_masks(defect, Path(masks_dir), spec.height_px, spec.width_px, options.crop, options.force)
    else:
        n_pixels = good.scores.size * spec.height_px * spec.width_px
        level = options.target_false_reject
        t = rules.good_pixel_threshold(largest, n_pixels, level) if good.scores.size else 0.0
        pixel = PixelChoice(threshold=t, method="good-pixel-quantile", detail=f"good pixels above it: at most {level:g} of {n_pixels} (the image target rate)")
    warnings = [f"skipped {s}" for s in good.skipped + (defect.skipped if defect else [])]
    warnings += [f"odd size, resized: {s}" for s in good.odd_sizes + (defect.odd_sizes if defect else [])]
    source = _describe(good_dirs, good, defect_dirs, defect, masks_dir, options.crop, spec.width_px, spec.height_px)
    # A defect's type is the folder it lies in: a --defect folder of images, or one of its per-type subfolders.
    types = [] if defect is None else [path.parent.name for path in defect.paths]
    result = decide(good.scores, None if defect is None else defect.scores, pixel, options, source=source, warnings=warnings, defect_types=types)
    return result, bundle.model_id


def find_mask(image: Path, masks_dir: Path) -> Path | None:
    """MVTec layout (masks/<type>/<stem>_mask.png) when masks/<type>/ exists, else the flat masks/<stem>_mask.png;
    <stem>.png is accepted in place of <stem>_mask.png."""
    typed = masks_dir / image.parent.name
    for folder in (typed,) if typed.is_dir() else (masks_dir,):
        for name in (f"{image.stem}_mask", image.stem):
            for suffix in IMAGE_SUFFIXES:
                candidate = folder / f"{name}{suffix}"
                if candidate.is_file():
                    return candidate
    return None


def load_mask(mask_path: Path, image_path: Path, height_px: int, width_px: int, crop: Roi | None) -> np.ndarray:
    """The mask on the model's grid: the image's crop, then the same resize (nearest, to stay binary)."""
    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise UserError(f"mask {mask_path} is unreadable; replace it with a PNG (0 = good, >0 = defect)")
    h, w = read_image(image_path).shape[:2]
    if mask.shape != (h, w):
        raise UserError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is {w}x{h}; masks must match their images")
    roi = crop or Roi(0, 0, w, h)
    mask = mask[roi.y : roi.y + roi.h, roi.x : roi.x + roi.w]
    if mask.shape != (height_px, width_px):
        mask = cv2.resize(mask, (width_px, height_px), interpolation=cv2.INTER_NEAREST)
    return mask > 0


def _pixel_from_masks(defect: Scored, masks_dir: Path, height_px: int, width_px: int, crop: Roi | None, force: bool) -> PixelChoice:
    assert defect.maps is not None
    masks, rows, missing, used = [], [], [], {}
    for i, path in enumerate(defect.paths):
        found = find_mask(path, masks_dir)
        if found is None:
            missing.append(path)
            continue
        if found in used:
            raise UserError(
                f"mask {found} would serve both {used[found]} and {path}; put masks in one subfolder per defect folder "
                f"({masks_dir}/{path.parent.name}/{path.stem}_mask.png), as in the MVTec ground_truth layout"
            )
        used[found] = path
        try:
            masks.append(load_mask(found, path, height_px, width_px, crop))
        except FrameError as e:
            raise UserError(f"{path}: {e}") from None
        rows.append(i)
    if missing and not force:
        raise UserError(
            f"no mask for {len(missing)} of {len(defect.paths)} defect images, e.g. {missing[0]} "
            f"(looked for {masks_dir}/{missing[0].parent.name}/{missing[0].stem}_mask.png and {masks_dir}/{missing[0].stem}.png); "
            "add them, or --force to fit the pixel threshold on the masked ones"
        )
    if not rows:
        raise UserError(f"no defect image has a mask in {masks_dir}; name them like the images (<name>_mask.png or <name>.png)")
    try:
        t, f1 = rules.pixel_f1_threshold(defect.maps[rows], np.stack(masks))
    except ValueError as e:
        raise UserError(f"masks in {masks_dir}: {e}") from None
    extra = f" ({len(missing)} without mask left out)" if missing else ""
    return PixelChoice(threshold=t, method="mask-best-f1", detail=f"best pixel F1 = {f1:.3f} over {len(rows)} masked defect images{extra}")


def _describe(good_dirs, good: Scored, defect_dirs, defect: Scored | None, masks_dir, crop: Roi | None, width_px: int, height_px: int) -> str:
    parts = [f"good: {', '.join(map(str, good_dirs))} ({good.scores.size})"]
    if defect is not None:
        parts.append(f"defect: {', '.join(map(str, defect_dirs))} ({defect.scores.size})")
    if masks_dir is not None:
        parts.append(f"masks: {masks_dir}")
    if crop is not None:
        parts.append(f"crop {crop.x},{crop.y},{crop.w},{crop.h}")
    if good.resized:
        parts.append(f"images {good.frame_size} resized to {width_px}x{height_px} as on the line")
    return "; ".join(parts)


def _ceil_sig(x: float) -> str:
    """x rounded up to 2 significant digits, so that the suggested target is really supported."""
    digits = 1 - math.floor(math.log10(x))
    return f"{math.ceil(x * 10**digits) / 10**digits:g}"
