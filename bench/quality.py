"""Quality benchmark: train the default recipe and its comparisons per category, evaluate, write BENCHMARKS.md.

    python bench/quality.py [--bench-script ../shared/benchmarks/texture_bench.py] [--out bench-out/quality]
                            [--categories brick,grass,gravel,tile] [--recipes default,head] [--steps N]
                            [--real-cells ../shared/benchmarks/real_cells]

"default" is the seed paper's method (the filter scored by its squared error, no head; "residual" names it);
"head" adds the learned comparator, and becomes the default only where it measures better on every category. "plain" and "denoising" are the paper's own
comparisons. --real-cells adds the real solar-cell images (category `cell`, trained and scored at --size;
image-level metrics only, the set has no masks).

Generates the dev benchmark (MVTec layout, 128 px) with the team's generator, never modified here, then
for every category and recipe runs `ssae train fit` and `ssae train eval` as subprocesses (exactly what a
user runs) and writes the table between the markers of the "Quality" section of BENCHMARKS.md.
Results are also kept as JSON per run, so an interrupted benchmark can be resumed (--reuse).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages and bench/ helpers
from bench.benchmarks_md import write_section  # noqa: E402
from edge.tools.bench import cpu_model  # noqa: E402

BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"
REAL_CELLS = "cell"  # the real solar-cell set's category


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def fit_and_eval(data: Path, out: Path, category: str, recipe: str, steps: int | None, reuse: bool, image_size: int | None = None) -> dict:
    result_file = out / f"{category}-{recipe}.json"
    if reuse and result_file.is_file():
        return {**json.loads(result_file.read_text()), "reused": True}
    bundle = out / f"{category}-{recipe}"
    cmd = [sys.executable, "-m", "ssae", "train", "fit", str(data), "--category", category, "--out", str(bundle), "--recipe", recipe, "--no-progress"]
    if steps:
        cmd += ["--steps", str(steps)]
    if image_size:
        cmd += ["--image-size", str(image_size)]
    t0 = time.perf_counter()
    run(cmd)
    train_min = (time.perf_counter() - t0) / 60
    eval_json = out / f"{category}-{recipe}.eval.json"
    run([sys.executable, "-m", "ssae", "train", "eval", str(bundle), str(data), "--category", category, "--json", str(eval_json)])
    ev = json.loads(eval_json.read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    prov = manifest["provenance"]
    row = {
        "category": category,
        "recipe": recipe,
        "image_auroc": ev["overall"]["image_auroc"],
        "pixel_auroc": ev["overall"]["pixel_auroc"],
        "aupro": ev["overall"]["aupro"],
        "steps": prov["steps"],
        "train_min": prov["train_seconds"] / 60,
        "wall_min": train_min,
        "images_per_s": prov["metrics"].get("images_per_s", 0.0),
        "per_defect": {d["defect"]: d["image_auroc"] for d in ev.get("per_defect", [])},
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    result_file.write_text(json.dumps(row, indent=2))
    return row


def _f(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return sum(values) / len(values) if values else None


def table(rows: list[dict], recipes: list[str]) -> str:
    lines = ["| category | recipe | image AUROC | pixel AUROC | AUPRO | steps | train min | images/s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['category']} | {r['recipe']} | {_f(r['image_auroc'])} | {_f(r['pixel_auroc'])} | {_f(r['aupro'])} | {r['steps']} | {r['train_min']:.1f} | {r['images_per_s']:.1f} |")
    for recipe in recipes:
        sel = [r for r in rows if r["recipe"] == recipe and r["category"] != REAL_CELLS]  # means: the textures'
        if sel:
            mean = {k: _mean(sel, k) for k in ("image_auroc", "pixel_auroc", "aupro", "train_min", "images_per_s")}
            lines.append(f"| **mean ({len(sel)})** | {recipe} | **{_f(mean['image_auroc'])}** | **{_f(mean['pixel_auroc'])}** | **{_f(mean['aupro'])}** | | {mean['train_min']:.1f} | {mean['images_per_s']:.1f} |")
    defects = sorted({d for r in rows for d in r["per_defect"]})
    if defects:
        lines += ["", "Image AUROC per defect type (each type vs all good test images):", "",
                  "| category | recipe | " + " | ".join(defects) + " |", "|---|---|" + "---|" * len(defects)]
        for r in rows:
            lines.append(f"| {r['category']} | {r['recipe']} | " + " | ".join(f"{r['per_defect'].get(d, float('nan')):.3f}" for d in defects) + " |")
    return "\n".join(lines)


def write_quality_section(text: str) -> None:
    write_section(ROOT / "BENCHMARKS.md", "## Quality (texture benchmark, CPU)", BEGIN, END, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench-script", type=Path, default=ROOT.parent / "shared" / "benchmarks" / "texture_bench.py")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "quality")
    ap.add_argument("--categories", default="brick,grass,gravel,tile")
    ap.add_argument("--recipes", default="default,head")
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's steps (default: the recipe's)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--reuse", action="store_true", help="reuse finished runs' JSON in --out")
    ap.add_argument("--real-cells", type=Path, default=None, help="also the real solar-cell set (MVTec layout, category cell) at this path")
    args = ap.parse_args()
    if not args.bench_script.is_file():
        sys.exit(f"error: benchmark generator {args.bench_script} not found; pass --bench-script PATH (it lives in the team's shared/benchmarks)")
    data = args.out / "data"
    if not (data / "brick").is_dir():
        data.mkdir(parents=True, exist_ok=True)
        run([sys.executable, str(args.bench_script), str(data), "--size", str(args.size)])
    recipes = args.recipes.split(",")
    rows = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    # Recipe-major: the default recipe's figures for every category come first.
    if args.real_cells is not None and not (args.real_cells / "cell" / "train" / "good").is_dir():
        sys.exit(f"error: --real-cells {args.real_cells} has no cell/train/good; pass the real_cells folder of the team's shared/benchmarks")
    runs = [(data, c, None) for c in args.categories.split(",")] + ([(args.real_cells, REAL_CELLS, args.size)] if args.real_cells else [])
    for recipe in recipes:
        for root, category, image_size in runs:
            rows.append(fit_and_eval(root, args.out, category, recipe, args.steps, args.reuse, image_size))
            header = (f"Command: `python bench/quality.py --categories {args.categories} --recipes {args.recipes}"
                      f"{f' --steps {args.steps}' if args.steps else ''}{f' --real-cells {args.real_cells}' if args.real_cells else ''}` (started {started})  \n"
                      f"Machine: {os.cpu_count()} cores, {cpu_model()}, CPU only, torch {torch_version()}; dataset: texture_bench.py --size {args.size}, seed 0.  \n"
                      "Train min = training time as measured by the loop.\n")
            reused = [f"{r['category']}/{r['recipe']} (finished {r.get('finished', 'in an earlier run')})" for r in rows if r.get("reused")]
            if reused:
                header += "Rows reused from an earlier run's JSON (--reuse): " + ", ".join(reused) + ".\n"
            write_quality_section(header + "\n" + table(rows, recipes))
    print(table(rows, recipes))


def torch_version() -> str:
    try:
        import torch

        return torch.__version__
    except ImportError:
        return "?"


if __name__ == "__main__":
    main()
