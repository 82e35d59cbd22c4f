"""Evaluate a bundle on a labelled test split: image AUROC, pixel AUROC, AUPRO, best F1.

The images go through the same code the line uses (edge.preprocess.fit_frame, then the bundle's ONNX
graph through edge.backends), so the numbers describe the exported artefact, not the torch module.
Masks are resized to the anomaly map with nearest-neighbour, keeping them binary. Metrics are given
per defect type (that type's images against all good images) and overall (every image).
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import msgspec
import numpy as np
from tqdm import tqdm

from edge.backends import open_backend
from edge.bundle import Bundle, load_bundle
from edge.errors import UserError
from edge.manifest import BundleError, read_manifest, write_manifest
from edge.preprocess import FrameError, fit_frame
from train.metrics import auroc, best_f1, pixel_metrics
from train.report import write_contact_sheet, write_scores_csv
from train.testset import GOOD, EvalSplit, find_testset, read_image, read_mask

OVERALL = "overall"
METRIC_PREFIX = "eval."  # keys this module owns in manifest.provenance.metrics


class DefectMetrics(msgspec.Struct, frozen=True, kw_only=True):
    defect: str  # a defect type, or "overall"
    n_good: int
    n_defect: int
    image_auroc: float
    best_f1: float
    best_f1_threshold: float  # score > threshold -> defect reaches best_f1 on these images
    precision: float  # at best_f1_threshold
    recall: float
    pixel_auroc: float | None = None  # None without masks (or when the masks are empty)
    aupro: float | None = None
    n_regions: int | None = None  # connected ground-truth regions behind AUPRO


class EvalResult(msgspec.Struct, frozen=True, kw_only=True):
    bundle: str
    model_id: str
    data: str  # the test folder holding good/ and the defect folders
    category: str | None
    layout: str  # "mvtec" or "folder"
    has_masks: bool  # False: image-level metrics only (no ground_truth/ folder)
    input_height_px: int
    input_width_px: int
    per_defect: tuple[DefectMetrics, ...]
    overall: DefectMetrics
    seconds: float  # reading + inference + metrics
    ignored_files: tuple[str, ...] = ()  # non-image files found in the image folders


class Scored(msgspec.Struct, frozen=True, kw_only=True):
    scores: np.ndarray  # float32 (N,)
    maps: np.ndarray  # float32 (N, H, W)
    masks: np.ndarray | None  # bool (N, H, W), None without ground truth
    defects: np.ndarray  # str (N,): "good" or the defect type


def score_split(bundle: Bundle, split: EvalSplit, *, threads: int = 0, batch: int = 16, progress: bool = False) -> Scored:
    """Run every image of the split through the bundle; masks come back at the map's size."""
    spec = bundle.manifest.input
    h, w = spec.height_px, spec.width_px
    n = len(split.samples)
    scores = np.empty(n, np.float32)
    maps = np.empty((n, h, w), np.float32)
    masks = np.zeros((n, h, w), bool) if split.has_masks else None
    first_shape: tuple[int, ...] | None = None
    backend = open_backend(bundle, "onnxruntime", threads=threads, max_batch=batch)
    try:
        bar = tqdm(total=n, desc="scoring", unit="img", disable=None if progress else True, leave=False)
        with bar:
            for start in range(0, n, batch):
                chunk = split.samples[start : start + batch]
                frames = np.empty((len(chunk), h, w, spec.channels), np.uint8)
                for j, sample in enumerate(chunk):
                    image = read_image(sample.path, first_shape)
                    first_shape = first_shape or image.shape
                    if image.ndim == 3 and image.shape[2] == 4:
                        image = image[..., :3]  # BGRA: the model sees colour only
                    try:
                        frames[j], _ = fit_frame(image, spec)
                    except FrameError as e:
                        raise UserError(f"{sample.path}: {e}; convert the test images to what the bundle takes") from e
                    if masks is not None and sample.mask_path is not None:
                        mask = read_mask(sample.mask_path, sample.path, image.shape)
                        masks[start + j] = resize_mask(mask, h, w)
                amap, score = backend.infer(frames)
                if amap.shape != frames.shape[:3]:
                    raise BundleError(f"bundle refused: anomaly_map is {amap.shape[1:]}, input is {(h, w)}; re-export the bundle")
                maps[start : start + len(chunk)] = amap
                scores[start : start + len(chunk)] = score
                bar.update(len(chunk))
    finally:
        backend.close()
    defects = np.array([s.defect for s in split.samples])
    return Scored(scores=scores, maps=maps, masks=masks, defects=defects)


def resize_mask(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour keeps the mask binary (an area average would invent partial pixels)."""
    if mask.shape == (h, w):
        return mask
    return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0


def metrics_for(scored: Scored, select: np.ndarray, name: str) -> DefectMetrics:
    """Metrics over the selected images (a boolean index over the scored set)."""
    labels = scored.defects[select] != GOOD
    scores = scored.scores[select]
    f1 = best_f1(scores, labels)
    pixel = {}
    if scored.masks is not None:
        px = pixel_metrics(scored.maps[select], scored.masks[select])
        pixel = dict(pixel_auroc=px.pixel_auroc, aupro=px.aupro, n_regions=px.n_regions)
    return DefectMetrics(
        defect=name,
        n_good=int((~labels).sum()),
        n_defect=int(labels.sum()),
        image_auroc=auroc(scores, labels),
        best_f1=f1.f1,
        best_f1_threshold=f1.threshold,
        precision=f1.precision,
        recall=f1.recall,
        **pixel,
    )


def evaluate(bundle: Bundle, split: EvalSplit, *, threads: int = 0, batch: int = 16, progress: bool = False) -> EvalResult:
    t0 = time.perf_counter()
    scored = score_split(bundle, split, threads=threads, batch=batch, progress=progress)
    return summarise(bundle, split, scored, t0)


def summarise(bundle: Bundle, split: EvalSplit, scored: Scored, t0: float) -> EvalResult:
    """The metrics of a scored split; t0: perf_counter() when the evaluation started."""
    good = scored.defects == GOOD
    per_defect = tuple(metrics_for(scored, good | (scored.defects == d), d) for d in split.defect_types)
    overall = metrics_for(scored, np.ones_like(good), OVERALL)
    spec = bundle.manifest.input
    return EvalResult(
        bundle=str(bundle.path),
        model_id=bundle.model_id,
        data=str(split.root),
        category=split.category,
        layout=split.layout,
        has_masks=split.has_masks,
        input_height_px=spec.height_px,
        input_width_px=spec.width_px,
        per_defect=per_defect,
        overall=overall,
        seconds=time.perf_counter() - t0,
        ignored_files=tuple(str(p) for p in split.ignored),
    )


def metrics_dict(result: EvalResult) -> dict[str, float]:
    """Flat numbers for manifest.provenance.metrics: eval.<metric> overall, eval.<defect>.<metric> per type."""
    out: dict[str, float] = {}
    for m in (result.overall, *result.per_defect):
        prefix = METRIC_PREFIX if m.defect == OVERALL else f"{METRIC_PREFIX}{m.defect}."
        for key in ("image_auroc", "pixel_auroc", "aupro", "best_f1", "best_f1_threshold", "n_good", "n_defect"):
            value = getattr(m, key)
            if value is not None:
                out[prefix + key] = float(value)
    return out


def record_metrics(bundle_path: str | Path, result: EvalResult) -> None:
    """Replace the eval.* entries of manifest.provenance.metrics (atomic write; model.onnx untouched)."""
    manifest = read_manifest(Path(bundle_path))
    if manifest.model_id != result.model_id:
        raise BundleError(f"bundle {bundle_path} changed during evaluation (model_id differs); run the evaluation again")
    kept = {k: v for k, v in manifest.provenance.metrics.items() if not k.startswith(METRIC_PREFIX)}
    provenance = msgspec.structs.replace(manifest.provenance, metrics={**kept, **metrics_dict(result)})
    write_manifest(Path(bundle_path), msgspec.structs.replace(manifest, provenance=provenance))


def evaluate_bundle(
    bundle_path: str | Path,
    data_root: str | Path,
    category: str | None = None,
    *,
    threads: int = 0,
    batch: int = 16,
    record: bool = True,
    progress: bool = False,
    scores_csv: Path | None = None,
    sheet_png: Path | None = None,
) -> EvalResult:
    """Load and verify the bundle, find the test split, score it, compute the metrics and (by default)
    record them in the bundle's manifest. Raises UserError / BundleError with one-line messages.

    scores_csv / sheet_png: also write the per-image scores and the contact sheet of the worst cases there
    (train/report.py)."""
    if batch < 1:
        raise UserError(f"batch {batch} is below 1; pass 1 or more")
    bundle = load_bundle(bundle_path)
    split = find_testset(data_root, category)
    t0 = time.perf_counter()
    scored = score_split(bundle, split, threads=threads, batch=batch, progress=progress)
    result = summarise(bundle, split, scored, t0)
    if scores_csv is not None:
        write_scores_csv(Path(scores_csv), split, scored.scores, scored.maps, scored.masks, result.overall.best_f1_threshold)
    if sheet_png is not None:
        write_contact_sheet(Path(sheet_png), split, bundle.manifest.input, scored.scores, scored.maps, scored.masks)
    if record:
        record_metrics(bundle_path, result)
    return result
