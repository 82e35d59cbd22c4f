"""GPU throughput and latency of the NVIDIA backends at 256², printed as a markdown table.

    python bench/gpu.py [--bundle PATH] [--size 256] [--seconds 3] [--backends torch-cuda,tensorrt] [--write]

Without --bundle it exports the default network (seeded, untrained: speed does not depend on the
weights) at --size with model.pt2, into bench-out/gpu/. For each backend it measures:
  throughput  images/s at batch 1, 8 and 32 with two batches in flight (submit k+1 before collecting k),
              frames already in host memory, results copied out: what the daemon's worker does
  latency     p50/p99 of one blocking infer() of a single frame (host frame in -> map and score out)
  stages      mean upload / compute / download ms per batch of 32 from CUDA events, and the overlap
              (sum of stage times over wall time per batch; above 1 means copies hid behind compute)
  pinned      the same throughput and latency with pageable host buffers (torch-cuda, pinned=False)
  fp16        max relative score difference of the FP16 run against FP32 on the same frames
Targets (issue 7, on an H100): >= 3000 images/s at 256², p99 latency <= 3 ms at batch 1.
--write puts the table into the "NVIDIA path / GPU" section of BENCHMARKS.md (between its markers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchmarks_md import write_section  # noqa: E402

BEGIN, END = "<!-- nvidia-gpu:begin -->", "<!-- nvidia-gpu:end -->"
HEADING = "## NVIDIA path / GPU"
BATCHES = (1, 8, 32)


def make_bundle(out: Path, size: int) -> Path:
    bundle = out / f"default-{size}"
    if (bundle / "model.pt2").is_file():
        return bundle
    import torch

    from edge.manifest import Provenance
    from train.export import InferenceGraph, export_bundle
    from train.model import FilterAE, ModelConfig

    torch.manual_seed(0)
    net = FilterAE(ModelConfig()).eval()
    graph = InferenceGraph(net, mean=[0.5] * 3, std=[0.25] * 3, smooth_sigma_px=max(1.0, size / 64))
    export_bundle(graph, bundle, height=size, width=size, channels=3, provenance=Provenance(data="bench/gpu.py", recipe="untrained"), with_torch_program=True)
    return bundle


def throughput(backend, frames: np.ndarray, batch: int, seconds: float) -> tuple[float, list]:
    """images/s with every slot busy; also the stage times of each batch."""
    chunk = frames[:batch]
    pending, stages, done = [], [], 0
    for _ in range(3):  # warm-up
        backend.infer(chunk)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        while backend.free_slots():
            pending.append(backend.submit(chunk))
        _, _, times = backend.collect_timed(pending.pop(0))
        stages.append(times)
        done += batch
    while pending:
        backend.collect(pending.pop(0))
        done += batch
    return done / (time.perf_counter() - start), stages


def latency(backend, frames: np.ndarray, n: int) -> tuple[float, float]:
    one = frames[:1]
    for _ in range(20):
        backend.infer(one)
    samples = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        backend.infer(one)
        samples[i] = (time.perf_counter() - t0) * 1e3
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


def measure(label: str, factory, frames: np.ndarray, seconds: float, latency_n: int) -> dict:
    row = {"config": label}
    for batch in BATCHES:
        backend = factory(batch)
        try:
            fps, stages = throughput(backend, frames, batch, seconds)
            row[f"b{batch}"] = fps
            if batch == BATCHES[-1] and stages:
                h2d = float(np.mean([s.h2d_ms for s in stages]))
                comp = float(np.mean([s.compute_ms for s in stages]))
                d2h = float(np.mean([s.d2h_ms for s in stages]))
                wall_ms = batch / fps * 1e3
                row["stages"] = f"{h2d:.2f} / {comp:.2f} / {d2h:.2f}"
                row["overlap"] = (h2d + comp + d2h) / wall_ms
            if batch == 1:
                row["p50"], row["p99"] = latency(backend, frames, latency_n)
        finally:
            backend.close()
    print(f"  {label}: " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "config"), flush=True)
    return row


def fp16_agreement(bundle, frames: np.ndarray) -> float:
    from edge.backends import open_backend

    scores = {}
    for precision in ("fp32", "fp16"):
        backend = open_backend(bundle, "torch-cuda", max_batch=32, precision=precision)
        try:
            scores[precision] = backend.infer(frames[:64])[1]
        finally:
            backend.close()
    return float(np.max(np.abs(scores["fp16"] - scores["fp32"]) / np.maximum(np.abs(scores["fp32"]), 1e-12)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=3.0, help="Per throughput measurement.")
    ap.add_argument("--latency-n", type=int, default=1000)
    ap.add_argument("--backends", default="torch-cuda,tensorrt")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "gpu")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--smoke-cpu", action="store_true", help="Check this script on a CPU (torch-cuda backend, device cpu, fp32); numbers meaningless.")
    args = ap.parse_args()

    import torch

    from edge.backends import open_backend
    from edge.bundle import load_bundle
    from edge.errors import UserError

    if not torch.cuda.is_available() and not args.smoke_cpu:
        sys.exit(f"no CUDA GPU visible to torch {torch.__version__}: nothing to measure here (run this on the GPU box)")
    bundle = load_bundle(args.bundle or make_bundle(args.out, args.size))
    spec = bundle.manifest.input
    frames = np.random.default_rng(0).integers(0, 256, (64, spec.height_px, spec.width_px, spec.channels), dtype=np.uint8)
    device = "CPU smoke test (not a measurement)" if args.smoke_cpu else torch.cuda.get_device_name(0)
    print(f"{device}, torch {torch.__version__}, CUDA {torch.version.cuda}, input {spec.width_px}x{spec.height_px}", flush=True)

    configs = []
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.smoke_cpu:
        configs.append(("torch-cuda on cpu, fp32", lambda b: open_backend(bundle, "torch-cuda", max_batch=b, device="cpu", cpu_threads=1)))
        wanted = []
    if "torch-cuda" in wanted:
        for label, kw in [
            ("torch-cuda fp16, CUDA graphs, pinned", {"precision": "fp16", "cuda_graphs": True}),
            ("torch-cuda fp16, eager, pinned", {"precision": "fp16"}),
            ("torch-cuda fp16, CUDA graphs, pageable", {"precision": "fp16", "cuda_graphs": True, "pinned": False}),
            ("torch-cuda fp32, eager, pinned", {"precision": "fp32"}),
        ]:
            configs.append((label, lambda b, kw=kw: open_backend(bundle, "torch-cuda", max_batch=b, **kw)))
    if "tensorrt" in wanted:
        configs.append(("tensorrt fp16, pinned (pycuda)", lambda b: open_backend(bundle, "tensorrt", max_batch=b, fp16=True)))

    rows, notes = [], []
    for label, factory in configs:
        try:
            rows.append(measure(label, factory, frames, args.seconds, args.latency_n))
        except UserError as e:  # e.g. TensorRT or pycuda not installed on this box
            notes.append(f"{label}: not measured ({e})")
            print(f"  {label}: skipped: {e}", flush=True)
    fp16_rel = fp16_agreement(bundle, frames) if "torch-cuda" in wanted else None

    def cell(row, key, fmt):
        return format(row[key], fmt) if key in row else "n/a"

    lines = [
        f"Device: **{device}**, torch {torch.__version__}, CUDA {torch.version.cuda}; input {spec.width_px}x{spec.height_px}x{spec.channels}, "
        f"two batches in flight; run {dt.date.today().isoformat()} with `python bench/gpu.py`.",
        "",
        "| config | img/s b1 | img/s b8 | img/s b32 | p50 ms b1 | p99 ms b1 | b32 up / compute / down ms | overlap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {cell(r, 'b1', '.0f')} | {cell(r, 'b8', '.0f')} | {cell(r, 'b32', '.0f')} | "
            f"{cell(r, 'p50', '.2f')} | {cell(r, 'p99', '.2f')} | {r.get('stages', 'n/a')} | {cell(r, 'overlap', '.2f')} |"
        )
    if fp16_rel is not None:
        lines += ["", f"FP16 vs FP32 (torch-cuda, 64 frames): max relative score difference {fp16_rel:.3%}."]
    best = max((r.get("b32", 0.0) for r in rows), default=0.0)
    p99 = min((r["p99"] for r in rows if "p99" in r), default=float("inf"))
    lines += ["", f"Targets: >= 3000 img/s (best here {best:.0f}: {'met' if best >= 3000 else 'NOT met'}); "
              f"p99 <= 3 ms at batch 1 (best here {p99:.2f} ms: {'met' if p99 <= 3 else 'NOT met'})."]
    lines += [f"- {n}" for n in notes]
    body = "\n".join(lines)
    print("\n" + body)
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", HEADING, BEGIN, END, body)


if __name__ == "__main__":
    main()
