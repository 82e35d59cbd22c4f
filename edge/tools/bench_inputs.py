"""The inputs of `ssae edge bench`: the bundle it times (built, or given), thresholds so that frames are judged, the
synthetic parts and their MJPG video.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np

from edge.errors import UserError


def make_untrained_bundle(out: Path, size_px: int) -> Path:
    """The default network (train.model.ModelConfig()), seeded but untrained: timing does not depend on weights."""
    try:
        import torch

        from edge.manifest import Provenance
        from train.export import InferenceGraph, export_bundle
        from train.model import FilterAE, ModelConfig
    except ImportError as e:
        raise UserError(f"building a benchmark bundle needs the training extra ({e}); pass --bundle or pip install '.[train]'") from e
    torch.manual_seed(0)
    net = FilterAE(ModelConfig()).eval()
    graph = InferenceGraph(net, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], smooth_sigma_px=max(1.0, size_px / 64))
    export_bundle(graph, out, height=size_px, width=size_px, channels=3,
                  provenance=Provenance(data="none (benchmark)", recipe="untrained, default ModelConfig"), with_torch_program=False)
    return out


def ensure_bundle(bundle: Path | None, work: Path, size_px: int) -> Path:
    if bundle is not None:
        return bundle
    out = work / f"bench-bundle-{size_px}"
    if not (out / "manifest.json").is_file():
        # A child process: torch's thread pool must not linger in the process that times ONNX Runtime.
        code = f"from pathlib import Path; from edge.tools.bench_inputs import make_untrained_bundle; make_untrained_bundle(Path({str(out)!r}), {size_px})"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise UserError(f"could not build the benchmark bundle in {out}: {done.stderr.strip().splitlines()[-1:]}; pass --bundle")
    return out


STAND_IN = "bench stand-in: 90th percentile of the bench frames' scores"


def _bench_copy(folder: Path) -> bool:
    from edge.manifest import read_manifest

    try:
        c = read_manifest(folder).calibration
    except Exception:  # noqa: BLE001 - anything unreadable is not ours to delete
        return False
    return c is not None and c.method == STAND_IN


def ensure_thresholds(bundle_dir: Path, work: Path, frames: np.ndarray, own: bool) -> tuple[Path, str]:
    """A bundle whose frames get verdicts, masks and regions, as on a calibrated line: (bundle, how it is judged).

    Uncalibrated, every frame would be "unknown" with no mask, and the daemon would skip the post-processing a
    line pays for. So a bundle without calibration gets a stand-in: image threshold at the 90th percentile of the
    bench frames' scores (a tenth of the frames judged defect, as a tenth of the parts carry one), pixel threshold
    the same (the mask is where the map exceeds it). The bench's own bundle takes it in place; a bundle given with
    --bundle is copied into the work folder first, never changed.
    """
    import shutil

    from edge.bundle import load_bundle
    from edge.manifest import Calibration, write_manifest

    bundle = load_bundle(bundle_dir)
    if bundle.manifest.calibration is not None:
        c = bundle.manifest.calibration
        return bundle_dir, f"the bundle's calibration (image threshold {c.image_threshold:.4g}, pixel {c.pixel_threshold:.4g})"
    from edge.backends import open_backend

    backend = open_backend(bundle, "onnxruntime", max_batch=8)
    try:
        scores = np.concatenate([backend.infer(np.ascontiguousarray(frames[i : i + 8]))[1] for i in range(0, min(len(frames), 200), 8)])
    finally:
        backend.close()
    threshold = float(np.percentile(scores, 90))
    target = bundle_dir if own else work / f"{bundle_dir.name}-bench-thresholds"
    if not own:
        if target.exists() and not _bench_copy(target):
            raise UserError(f"{target} exists and is not a copy this bench made; move it away or pass another --work")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(bundle_dir, target)
    calibration = Calibration(image_threshold=threshold, pixel_threshold=threshold, method=STAND_IN,
                              note="written by ssae edge bench so that frames are judged; not a calibration")
    write_manifest(target, msgspec.structs.replace(bundle.manifest, calibration=calibration))
    return target, f"stand-in thresholds (the bundle is uncalibrated): image = pixel = {threshold:.4g}, the 90th percentile of the frames' scores"


def make_frames(n: int, size_px: int, seed: int = 0) -> np.ndarray:
    """n synthetic parts, every 10th with a defect (the project's generator; numpy + OpenCV)."""
    from train.synthetic import DEFECT_KINDS, add_defect, make_part, rng_for

    frames = np.empty((n, size_px, size_px, 3), np.uint8)
    for i in range(n):
        rng = rng_for(seed, "bench", i)
        img = make_part(size_px, rng)
        if i % 10 == 9:
            img, _ = add_defect(img, DEFECT_KINDS[(i // 10) % len(DEFECT_KINDS)], rng)
        frames[i] = img
    return frames


def write_video(path: Path, frames: np.ndarray, fps: float = 30.0) -> Path:
    import cv2

    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise UserError(f"OpenCV cannot write MJPG video {path}; check the folder is writable")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()
    return path
