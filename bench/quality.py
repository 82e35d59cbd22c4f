"""Quality benchmark: train the default and the plain recipe per category, evaluate, write BENCHMARKS.md.

    python bench/quality.py [--bench-script ../shared/benchmarks/texture_bench.py] [--out bench-out/quality]
                            [--categories brick,grass,gravel,tile] [--recipes default,plain] [--steps N]

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


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def fit_and_eval(data: Path, out: Path, category: str, recipe: str, steps: int | None, reuse: bool) -> dict:
    result_file = out / f"{category}-{recipe}.json"
    if reuse and result_file.is_file():
        return {**json.loads(result_file.read_text()), "reused": True}
    bundle = out / f"{category}-{recipe}"
    cmd = [sys.executable, "-m", "ssae", "train", "fit", str(data), "--category", category, "--out", str(bundle), "--recipe", recipe, "--no-progress"]
    if steps:
        cmd += ["--steps", str(steps)]
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


def table(rows: list[dict], recipes: list[str]) -> str:
    lines = ["| category | recipe | image AUROC | pixel AUROC | AUPRO | steps | train min | images/s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['category']} | {r['recipe']} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | {r['aupro']:.4f} | {r['steps']} | {r['train_min']:.1f} | {r['images_per_s']:.1f} |")
    for recipe in recipes:
        sel = [r for r in rows if r["recipe"] == recipe]
        if sel:
            mean = {k: sum(r[k] for r in sel) / len(sel) for k in ("image_auroc", "pixel_auroc", "aupro", "train_min", "images_per_s")}
            lines.append(f"| **mean ({len(sel)})** | {recipe} | **{mean['image_auroc']:.4f}** | **{mean['pixel_auroc']:.4f}** | **{mean['aupro']:.4f}** | | {mean['train_min']:.1f} | {mean['images_per_s']:.1f} |")
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
    ap.add_argument("--recipes", default="default,plain")
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's steps (default: the recipe's)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--reuse", action="store_true", help="reuse finished runs' JSON in --out")
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
    for recipe in recipes:
        for category in args.categories.split(","):
            rows.append(fit_and_eval(data, args.out, category, recipe, args.steps, args.reuse))
            header = (f"Command: `python bench/quality.py --categories {args.categories} --recipes {args.recipes}"
                      f"{f' --steps {args.steps}' if args.steps else ''}` (started {started})  \n"
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
