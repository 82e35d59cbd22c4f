"""Does a change of exposure alone make good parts look defective? (issue 20: no brightness rule may pass.)

    python bench/exposure.py BUNDLE GOOD_DIR [--factors 0.85,1.15] [--defect-dir DIR] [--threshold T]

Scores the good images as they are and with every pixel scaled by each factor (clipped to 0..255, as a
camera's exposure change would do), through the edge's own path (fit_frame + ONNX Runtime), and reports how
many of them the bundle's image threshold (or --threshold) then rejects. A detector that reads brightness
rejects many more at 0.85 or 1.15 than at 1.0. --defect-dir scores defective images too, for the AUROC of the
shifted good images against them. Prints one markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from edge.backends import open_backend  # noqa: E402
from edge.bundle import load_bundle  # noqa: E402
from edge.files import list_images  # noqa: E402
from edge.preprocess import fit_frame  # noqa: E402
from train.metrics import auroc  # noqa: E402


def scores_of(backend, spec, images: list[np.ndarray], factor: float) -> np.ndarray:
    out = []
    for i in range(0, len(images), 8):
        batch = [np.clip(img.astype(np.float32) * factor, 0, 255).astype(np.uint8) for img in images[i : i + 8]]
        frames = np.stack([fit_frame(b, spec)[0] for b in batch])
        out.append(backend.infer(frames)[1])
    return np.concatenate(out)


def read(folder: Path) -> list[np.ndarray]:
    return [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in list_images(folder)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("good", type=Path)
    ap.add_argument("--defect-dir", type=Path, default=None)
    ap.add_argument("--factors", default="0.85,1.15")
    ap.add_argument("--threshold", type=float, default=None)
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    spec = bundle.manifest.input
    threshold = args.threshold if args.threshold is not None else bundle.manifest.calibration.image_threshold
    backend = open_backend(bundle, threads=1, max_batch=8)
    good = read(args.good)
    defect = scores_of(backend, spec, read(args.defect_dir), 1.0) if args.defect_dir else None
    print(f"Bundle `{args.bundle}` (model {bundle.model_id[:12]}), {len(good)} good images from `{args.good}`, threshold {threshold:.6g} "
          f"({'given' if args.threshold is not None else bundle.manifest.calibration.method}).\n")
    print("| exposure | good rejected | median good score | AUROC vs defects at 1.0 |\n|---|---|---|---|")
    for factor in [1.0] + [float(f) for f in args.factors.split(",")]:
        s = scores_of(backend, spec, good, factor)
        vs = f"{auroc(np.concatenate([s, defect]), np.r_[np.zeros(len(s), bool), np.ones(len(defect), bool)]):.3f}" if defect is not None else "-"
        print(f"| x{factor:.2f} | {int((s > threshold).sum())} of {len(s)} | {np.median(s):.4g} | {vs} |")
    backend.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
