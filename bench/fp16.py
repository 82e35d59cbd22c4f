"""FP16 safety benchmark: does running the model in FP16 change verdicts or image AUROC?

    python bench/fp16.py [--bundle PATH] [--size 256] [--steps 120] [--out bench-out/fp16] [--write]

Without --bundle it writes the project's synthetic parts (train/synthetic.py, MVTec layout, with
defects and masks) at --size, trains the default recipe and default network with `ssae train fit`
(a subprocess, exactly what a user runs; reused when already there), then runs the FP16 check of
edge/tools/fp16_check.py on the labelled test split: ONNX Runtime on the CPU, FP32 graph against the FP16
rewrite, verdicts judged at the bundle's calibrated threshold. --write puts the table into the
"NVIDIA path / FP16" section of BENCHMARKS.md (between its markers; nothing else in the file changes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchmarks_md import write_section  # noqa: E402

BEGIN, END = "<!-- nvidia-fp16:begin -->", "<!-- nvidia-fp16:end -->"
HEADING = "## NVIDIA path / FP16"


def make_bundle(out: Path, size: int, steps: int) -> tuple[Path, Path]:
    from train.synthetic import write_dataset

    data = out / f"parts{size}"
    if not (data / "part" / "test").is_dir():
        write_dataset(data, category="part", size=size, n_train=60, n_test_good=30, n_defect=10, seed=0)
    bundle = out / f"bundle{size}-{steps}"
    if not (bundle / "manifest.json").is_file():
        cmd = [sys.executable, "-m", "ssae", "train", "fit", str(data), "--category", "part", "--out", str(bundle), "--steps", str(steps), "--no-progress"]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    return bundle, data / "part"


def table(result, bundle, seconds: float) -> str:
    m = bundle.manifest
    prov = m.provenance
    model = prov.recipe_config.get("model", {}) if isinstance(prov.recipe_config, dict) else {}

    def num(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    rows = [
        ("bundle", f"{m.input.width_px}x{m.input.height_px}x{m.input.channels}, widths {model.get('widths', '?')}, recipe {prov.recipe}, {prov.steps} steps"),
        ("images (labelled test split)", f"{result.images}"),
        ("score abs diff, max / mean", f"{result.score_max_abs_diff:.3g} / {result.score_mean_abs_diff:.3g}"),
        ("score relative diff, max", f"{result.score_max_rel_diff:.3%}"),
        ("anomaly map abs diff, max", f"{result.map_max_abs_diff:.3g}"),
        ("threshold (source)", f"{num(result.threshold, '.6g')} ({result.threshold_source})"),
        ("nearest score to threshold", num(result.nearest_margin, ".3g")),
        ("images within the max FP16 change of the threshold", num(result.near_threshold, "d")),
        ("verdict flips", num(result.flips, "d")),
        ("image AUROC fp32 / fp16", f"{num(result.auroc_fp32, '.4f')} / {num(result.auroc_fp16, '.4f')}"),
        ("ops ORT CPU ran in fp32", ", ".join(f"{k} x{v}" for k, v in result.ort_fp32_ops.items()) or "none"),
        ("verdict", result.verdict),
    ]
    lines = ["| quantity | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    notes = [
        "",
        f"Run {dt.date.today().isoformat()} on {platform.machine()} CPU with `python bench/fp16.py --write` "
        f"(the check itself: {seconds:.0f} s; `ssae edge fp16-check BUNDLE DATA` does the same on any bundle).",
        "Method: ONNX Runtime (CPU) runs the bundle's graph as exported (FP32) and rewritten to FP16 by",
        "edge/tools/onnx_fp16.py (every float tensor and weight FP16, uint8 input and float32 outputs kept). ONNX",
        "Runtime's CPU provider has no FP16 kernel for the ops listed above: it rounds their inputs and outputs",
        "to FP16 and computes in FP32 between, i.e. FP16 storage with FP32 accumulation, as GPU tensor-core",
        "convolutions do. A TensorRT tactic that accumulates in FP16 would deviate more; that and the FP16",
        "numbers of a real GPU were NOT measured here (no GPU in this session): `bench/gpu.py` prints the",
        "torch-cuda FP16-vs-FP32 score difference where a GPU is present.",
    ]
    if result.near_threshold:
        notes += [
            f"{result.near_threshold} image(s) scored closer to the threshold than the largest FP16 change: verdicts held "
            "here, but a part that close to the threshold can go either way under any small perturbation (FP16, "
            "lighting, sensor noise); it is the calibration's margin, not FP16, that decides such parts.",
        ]
    return "\n".join(lines + notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="Check this bundle (with --data) instead of training one.")
    ap.add_argument("--data", type=Path, help="Images or a labelled test split for --bundle.")
    ap.add_argument("--size", type=int, default=256, help="Image side of the synthetic parts (default 256).")
    ap.add_argument("--steps", type=int, default=120, help="Training steps for the bundle made here.")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "fp16")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="Write the table into BENCHMARKS.md.")
    args = ap.parse_args()

    from edge.bundle import load_bundle
    from edge.tools.fp16_check import check_bundle, format_result

    if args.bundle:
        if not args.data:
            ap.error("--bundle needs --data")
        bundle_path, data = args.bundle, args.data
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        bundle_path, data = make_bundle(args.out, args.size, args.steps)
    bundle = load_bundle(bundle_path)
    t0 = time.perf_counter()
    result = check_bundle(bundle, [data], threads=args.threads)
    seconds = time.perf_counter() - t0
    print(format_result(result))
    body = table(result, bundle, seconds)
    print("\n" + body)
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", HEADING, BEGIN, END, body)
        print(f"\nwritten to {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
