"""Gray benchmark (issue 21): the same gray images trained as 1-channel and as 3-equal-channel PNGs.

    python bench/gray.py [--real ../shared/benchmarks/real_cells] [--texture grass] [--size 128]
                         [--steps N] [--seed 0] [--threads 0] [--out /tmp/ssae-gray-bench] [--no-md]

Datasets: real_cells (stored 1-channel; a 3-channel copy is written under --out) and one gray category of
the texture benchmark (generated 3-channel; a 1-channel copy is written under --out). Both copies stay in
--out, outside the repository. For each, `ssae train fit` and `ssae train eval` run as subprocesses (what
a user runs), and the two bundles are compared: whether their weights are identical and the largest score
difference on the test images. Writes the "Gray images" section of BENCHMARKS.md unless --no-md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages and bench/ helpers
from bench.benchmarks_md import write_section  # noqa: E402
from edge.tools.bench import cpu_model  # noqa: E402

BEGIN, END = "<!-- gray:begin -->", "<!-- gray:end -->"


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def copy_channels(src: Path, dst: Path, channels: int) -> None:
    """Every PNG under src, as `channels` equal channels under dst (same names); masks stay single-channel."""
    if (dst / ".complete").is_file():
        return
    for p in sorted(src.rglob("*.png")):
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        gray = img if img.ndim == 2 else img[..., 0]
        if img.ndim == 3 and not (img == img[..., :1]).all():
            sys.exit(f"error: {p} is not gray (its channels differ); pick a gray dataset")
        out = dst / p.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        is_mask = "ground_truth" in p.relative_to(src).parts
        cv2.imwrite(str(out), gray if channels == 1 or is_mask else cv2.merge([gray] * 3))
    (dst / ".complete").write_text("")


def fit_and_eval(data: Path, category: str, bundle: Path, size: int, steps: int | None, seed: int, threads: int) -> dict:
    cmd = [sys.executable, "-m", "ssae", "train", "fit", str(data), "--category", category, "--out", str(bundle),
           "--image-size", str(size), "--seed", str(seed), "--threads", str(threads), "--no-progress"]
    if steps:
        cmd += ["--steps", str(steps)]
    run(cmd)
    eval_json = bundle.parent / f"{bundle.name}.eval.json"
    run([sys.executable, "-m", "ssae", "train", "eval", str(bundle), str(data), "--category", category, "--json", str(eval_json)])
    ev = json.loads(eval_json.read_text())["overall"]
    prov = json.loads((bundle / "manifest.json").read_text())["provenance"]
    return {"image_auroc": ev["image_auroc"], "pixel_auroc": ev.get("pixel_auroc"), "steps": prov["steps"], "train_min": prov["train_seconds"] / 60}


def compare(b1: Path, b3: Path, test_root: Path) -> tuple[bool, float]:
    """(same weights in the two checkpoints, largest |score difference| / largest score on the test images)."""
    import torch

    from edge.backends import open_backend
    from edge.bundle import load_bundle
    from edge.preprocess import fit_frame
    from train.loop import CKPT_NAME, work_dir_for

    w1, w3 = (torch.load(work_dir_for(b) / CKPT_NAME, map_location="cpu", weights_only=False)["model"] for b in (b1, b3))
    same = w1.keys() == w3.keys() and all(w1[k].shape == w3[k].shape and torch.equal(w1[k], w3[k]) for k in w1)
    frames = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(test_root.rglob("*.png"))]
    scores = []
    for b in (b1, b3):
        bundle = load_bundle(b)
        backend = open_backend(bundle, "onnxruntime", max_batch=16)
        try:
            s = [backend.infer(np.stack([fit_frame(f, bundle.manifest.input)[0] for f in frames[i : i + 16]]))[1] for i in range(0, len(frames), 16)]
        finally:
            backend.close()
        scores.append(np.concatenate(s))
    return same, float(np.abs(scores[0] - scores[1]).max() / max(float(scores[1].max()), 1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "benchmarks" / "real_cells")
    ap.add_argument("--bench-script", type=Path, default=ROOT.parent / "shared" / "benchmarks" / "texture_bench.py")
    ap.add_argument("--texture", default="grass", help="a gray texture_bench category (brick, grass or gravel)")
    ap.add_argument("--size", type=int, default=128, help="--image-size for training (real_cells are 300 px)")
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's steps (default: the recipe's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: all cores)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/ssae-gray-bench"), help="data copies and bundles (outside the repo)")
    ap.add_argument("--no-md", action="store_true", help="do not write BENCHMARKS.md")
    args = ap.parse_args()
    for path, what in ((args.real / "cell", "real_cells"), (args.bench_script, "texture_bench.py")):
        if not path.exists():
            sys.exit(f"error: {what} not found at {path}; pass --real / --bench-script (they live in the team's shared/benchmarks)")
    out = args.out
    tex3 = out / "texture-3ch"
    if not (tex3 / args.texture).is_dir():
        tex3.mkdir(parents=True, exist_ok=True)
        run([sys.executable, str(args.bench_script), str(tex3), "--size", str(args.size), "--categories", args.texture])
    copy_channels(tex3 / args.texture, out / "texture-1ch" / args.texture, 1)
    copy_channels(args.real / "cell", out / "real-3ch" / "cell", 3)
    sets = {"real_cells": ("cell", args.real, out / "real-3ch"), f"texture {args.texture}": (args.texture, out / "texture-1ch", tex3)}
    rows = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for name, (category, root1, root3) in sets.items():
        tag = name.replace(" ", "-")
        b1, b3 = out / f"{tag}-1ch", out / f"{tag}-3ch"
        r1 = fit_and_eval(root1, category, b1, args.size, args.steps, args.seed, args.threads)
        r3 = fit_and_eval(root3, category, b3, args.size, args.steps, args.seed, args.threads)
        same, diff = compare(b1, b3, root1 / category / "test")
        rows += [{"set": name, "channels": 1, **r1, "same": same, "diff": diff}, {"set": name, "channels": 3, **r3, "same": same, "diff": diff}]
    lines = ["| dataset | stored as | image AUROC | pixel AUROC | steps | train min | same weights | max score diff (rel.) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        px = f"{r['pixel_auroc']:.4f}" if r["pixel_auroc"] is not None else "n/a"
        lines.append(f"| {r['set']} | {r['channels']} channel{'s' if r['channels'] > 1 else ''} | {r['image_auroc']:.4f} | {px} | "
                     f"{r['steps']} | {r['train_min']:.1f} | {'yes' if r['same'] else 'no'} | {r['diff']:.1e} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_md:
        header = (f"Command: `python bench/gray.py --texture {args.texture} --size {args.size}{f' --steps {args.steps}' if args.steps else ''}"
                  f" --seed {args.seed}` (started {started})  \n"
                  f"Machine: {os.cpu_count()} cores, {cpu_model()}; default recipe, evaluated with ONNX Runtime.\n")
        write_section(ROOT / "BENCHMARKS.md", "## Gray images: 1 channel vs 3 equal channels", BEGIN, END, header + "\n" + text)


if __name__ == "__main__":
    main()
