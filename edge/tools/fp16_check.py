"""Is FP16 safe for this bundle? Run the ONNX graph in FP32 and in FP16 on the same images and compare.

A GPU engine built with FP16 changes every score a little. What matters on the line is whether it
changes a verdict (a score crossing the calibrated threshold) or the ranking of good against
defective parts (image AUROC). Both runs use ONNX Runtime on the CPU, so the check runs anywhere;
the FP16 graph comes from edge.tools.onnx_fp16 (all float tensors FP16, I/O types kept).

Honest limit: ONNX Runtime's CPU provider has no FP16 kernel for some ops (it reports which, e.g.
Conv); it rounds their inputs and outputs to FP16 and computes in FP32 between. That models FP16
storage with FP32 accumulation, which is what GPU tensor-core convolutions do; a TensorRT tactic
accumulating in FP16 would differ more. `ssae edge fp16-check` on the GPU box itself, or bench/gpu.py,
measures the real thing where a GPU is available.
"""

from __future__ import annotations

import collections
import os
import tempfile
from pathlib import Path

import msgspec
import numpy as np

from edge.bundle import Bundle
from edge.errors import UserError
from edge.files import IMAGE_SUFFIXES, list_images
from edge.preprocess import FrameError, fit_frame
from train.metrics import auroc  # numpy only; tools may import train/


class ImageSet(msgspec.Struct, frozen=True, kw_only=True):
    paths: tuple[Path, ...]
    labels: tuple[int, ...] | None  # 1 = defect, 0 = good; None when any image has no label


class Fp16Result(msgspec.Struct, frozen=True, kw_only=True):
    images: int
    score_max_abs_diff: float
    score_mean_abs_diff: float
    score_max_rel_diff: float  # |s16 - s32| / s32, worst image
    map_max_abs_diff: float
    threshold: float | None  # image threshold verdicts were judged at
    threshold_source: str  # "manifest calibration", "given", or "none"
    nearest_margin: float | None  # smallest |s32 - threshold|: how close any image came
    flips: int | None  # verdicts that differ between FP32 and FP16 (None without a threshold)
    flipped: tuple[str, ...] = ()
    near_threshold: int | None = None  # images whose FP32 score lies within the largest FP16 change of the threshold
    auroc_fp32: float | None = None
    auroc_fp16: float | None = None
    keep_fp32_ops: tuple[str, ...] = ()
    ort_fp32_ops: dict[str, int] = {}  # ops ONNX Runtime computes in FP32 between FP16 roundings
    passed: bool = False
    verdict: str = ""


def collect_images(inputs: list[Path]) -> ImageSet:
    """Images from files, plain folders, or labelled test splits (MVTec layout or good/ + defect folders)."""
    from train.testset import GOOD, find_testset  # numpy/OpenCV only, no torch

    paths: list[Path] = []
    labels: list[int | None] = []
    for item in map(Path, inputs):
        if not item.exists():
            raise UserError(f"{item} does not exist; pass image files, folders of images, or a labelled test split")
        if item.is_file():
            paths.append(item)
            labels.append(None)
        elif (item / "test").is_dir() or (item / GOOD).is_dir() or any((p / "test").is_dir() for p in item.iterdir() if p.is_dir()):
            split = find_testset(item)
            paths += [s.path for s in split.samples]
            labels += [0 if s.defect == GOOD else 1 for s in split.samples]
        else:
            found = list_images(item)
            if not found:
                raise UserError(f"{item} holds no images ({', '.join(IMAGE_SUFFIXES)}); pass a folder of images or a test split")
            paths += found
            labels += [None] * len(found)
    if not paths:
        raise UserError("no images given; pass image files, folders, or a labelled test split")
    known = None if any(v is None for v in labels) else tuple(int(v) for v in labels)
    return ImageSet(paths=tuple(paths), labels=known)


def load_frames(bundle: Bundle, paths: tuple[Path, ...]) -> np.ndarray:
    """uint8 (N, H, W, C): each image fitted to the model input exactly as the line does."""
    import cv2

    spec = bundle.manifest.input
    frames = np.empty((len(paths), spec.height_px, spec.width_px, spec.channels), np.uint8)
    for i, path in enumerate(paths):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None or image.dtype != np.uint8:
            raise UserError(f"cannot read {path} as an 8-bit image; replace or remove it")
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[..., :3]
        try:
            frames[i], _ = fit_frame(image, spec)
        except FrameError as e:
            raise UserError(f"{path}: {e}; convert the image to what the bundle takes") from None
    return frames


def ort_session(model_bytes: bytes, threads: int = 0, optimized_path: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    if optimized_path:
        # Basic level keeps ONNX Runtime's own inserted casts visible and the graph readable.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def fp32_fallback_ops(optimized_path: str, own_nodes: set[str]) -> dict[str, int]:
    """Ops fed by a Cast-to-float that ONNX Runtime inserted: those run in FP32 on the CPU."""
    import onnx

    graph = onnx.load(optimized_path).graph
    producer = {out: n for n in graph.node for out in n.output}
    counts: collections.Counter[str] = collections.Counter()
    for node in graph.node:
        if node.op_type == "Cast":
            continue
        for name in node.input:
            src = producer.get(name)
            if src is not None and src.op_type == "Cast" and src.name not in own_nodes and src.attribute[0].i == 1:
                counts[node.op_type] += 1
                break
    return dict(sorted(counts.items()))


def run_all(session, names: list[str], frames: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    maps, scores = [], []
    for i in range(0, len(frames), batch):
        m, s = session.run(names[1:], {names[0]: frames[i : i + batch]})
        maps.append(m)
        scores.append(s)
    return np.concatenate(maps), np.concatenate(scores)


def compare_fp16(
    bundle: Bundle,
    frames: np.ndarray,
    *,
    labels: tuple[int, ...] | None = None,
    names: tuple[str, ...] | None = None,
    threshold: float | None = None,
    keep_fp32_ops: tuple[str, ...] = (),
    auroc_tolerance: float = 0.001,
    threads: int = 0,
    batch: int = 8,
) -> Fp16Result:
    """Score `frames` with the bundle in FP32 and FP16 (ONNX Runtime, CPU) and judge the difference."""
    try:
        import onnx

        from edge.tools.onnx_fp16 import convert_to_fp16
    except ImportError as e:
        raise UserError(f"the FP16 check needs the onnx package ({e}); pip install 'ssae-inspect[nvidia]' or onnx") from None

    model = onnx.load(str(bundle.model_path))
    model16, _ = convert_to_fp16(model, keep_fp32_ops)
    io = [bundle.manifest.input.name, bundle.manifest.outputs.anomaly_map, bundle.manifest.outputs.score]
    with tempfile.TemporaryDirectory(prefix="ssae-fp16-") as tmp:
        optimized = str(Path(tmp) / "fp16-optimized.onnx")
        s16 = ort_session(model16.SerializeToString(), threads, optimized)
        fallback = fp32_fallback_ops(optimized, {n.name for n in model16.graph.node})
    s32 = ort_session(bundle.model_path.read_bytes(), threads)
    map32, score32 = run_all(s32, io, frames, batch)
    map16, score16 = run_all(s16, io, frames, batch)
    return judge(
        score32, score16, map32, map16, labels=labels, names=names, threshold=threshold,
        threshold_source="given" if threshold is not None else "none",
        keep_fp32_ops=keep_fp32_ops, ort_fp32_ops=fallback, auroc_tolerance=auroc_tolerance,
    )


def judge(
    score32: np.ndarray,
    score16: np.ndarray,
    map32: np.ndarray,
    map16: np.ndarray,
    *,
    labels: tuple[int, ...] | None,
    names: tuple[str, ...] | None,
    threshold: float | None,
    threshold_source: str,
    keep_fp32_ops: tuple[str, ...] = (),
    ort_fp32_ops: dict[str, int] | None = None,
    auroc_tolerance: float = 0.001,
) -> Fp16Result:
    """The comparison itself: differences, verdict flips at the threshold, AUROC both ways."""
    score32 = np.asarray(score32, np.float64)
    score16 = np.asarray(score16, np.float64)
    if score32.shape != score16.shape or len(score32) == 0:
        raise ValueError(f"score arrays differ or are empty: {score32.shape} vs {score16.shape}")
    diff = np.abs(score16 - score32)
    rel = diff / np.maximum(np.abs(score32), np.finfo(np.float32).tiny)
    names = names or tuple(str(i) for i in range(len(score32)))
    flips = margin = near = None
    flipped: tuple[str, ...] = ()
    if threshold is not None:
        changed = (score32 > threshold) != (score16 > threshold)  # same rule as the daemon: score > threshold is a defect
        flips = int(changed.sum())
        flipped = tuple(names[i] for i in np.flatnonzero(changed))
        margin = float(np.abs(score32 - threshold).min())
        near = int((np.abs(score32 - threshold) <= diff.max()).sum())  # could have flipped at this error size
    auc32 = auc16 = None
    if labels is not None and 0 < sum(labels) < len(labels):
        auc32, auc16 = auroc(score32, np.array(labels)), auroc(score16, np.array(labels))
    problems = []
    if flips:
        problems.append(f"{flips} verdict(s) flip at threshold {threshold:.6g}")
    if auc32 is not None and abs(auc16 - auc32) > auroc_tolerance:
        problems.append(f"image AUROC moves from {auc32:.4f} to {auc16:.4f}")
    unchecked = []
    if flips is None:
        unchecked.append("no threshold, so verdicts were not compared (calibrate the bundle or pass --threshold)")
    if auc32 is None:
        unchecked.append("no good+defect labels, so AUROC was not compared")
    if problems:
        verdict = "FP16 NOT safe: " + "; ".join(problems)
    else:
        verdict = "FP16 safe on these images: max score difference " + f"{diff.max():.3g} ({rel.max():.2%} relative)"
        verdict += "".join(f"; {u}" for u in unchecked)
    return Fp16Result(
        images=len(score32),
        score_max_abs_diff=float(diff.max()),
        score_mean_abs_diff=float(diff.mean()),
        score_max_rel_diff=float(rel.max()),
        map_max_abs_diff=float(np.abs(np.asarray(map16, np.float64) - map32).max()),
        threshold=threshold,
        threshold_source=threshold_source,
        nearest_margin=margin,
        flips=flips,
        flipped=flipped,
        near_threshold=near,
        auroc_fp32=auc32,
        auroc_fp16=auc16,
        keep_fp32_ops=tuple(keep_fp32_ops),
        ort_fp32_ops=dict(ort_fp32_ops or {}),
        passed=not problems,
        verdict=verdict,
    )


def check_bundle(
    bundle: Bundle, inputs: list[Path], *, threshold: float | None = None, keep_fp32_ops: tuple[str, ...] = (), threads: int = 0
) -> Fp16Result:
    """What `ssae edge fp16-check` runs: images from inputs, threshold from the flag or the bundle's calibration."""
    images = collect_images(inputs)
    frames = load_frames(bundle, images.paths)
    source = "given"
    if threshold is None and bundle.manifest.calibration is not None:
        threshold, source = bundle.manifest.calibration.image_threshold, "manifest calibration"
    result = compare_fp16(bundle, frames, labels=images.labels, names=tuple(str(p) for p in images.paths), threshold=threshold,
                          keep_fp32_ops=keep_fp32_ops, threads=threads)
    return msgspec.structs.replace(result, threshold_source=source if threshold is not None else "none")


def format_result(r: Fp16Result) -> str:
    def num(v, fmt=".6g"):
        return "n/a" if v is None else format(v, fmt)

    lines = [
        f"images                 {r.images}",
        f"score |fp16-fp32|      max {r.score_max_abs_diff:.3g}, mean {r.score_mean_abs_diff:.3g}, max relative {r.score_max_rel_diff:.3%}",
        f"map |fp16-fp32|        max {r.map_max_abs_diff:.3g}",
        f"threshold              {num(r.threshold)} ({r.threshold_source}); nearest score {num(r.nearest_margin, '.3g')} away",
        f"near the threshold     {num(r.near_threshold, 'd')} image(s) within the largest FP16 change of it",
        f"verdict flips          {num(r.flips, 'd')}" + (f": {', '.join(r.flipped[:5])}" + (" …" if len(r.flipped) > 5 else "") if r.flipped else ""),
        f"image AUROC            fp32 {num(r.auroc_fp32, '.4f')}, fp16 {num(r.auroc_fp16, '.4f')}",
        f"kept in fp32           {', '.join(r.keep_fp32_ops) or 'nothing'}",
        "ORT CPU ran in fp32    " + (", ".join(f"{k} x{v}" for k, v in r.ort_fp32_ops.items()) or "nothing") + " (FP16 rounding between ops)",
        r.verdict,
    ]
    return "\n".join(lines)
