"""What each recipe's graph costs at inference: ONNX Runtime CPU time per image, untrained bundles.

    python bench/model_cost.py [--size 256] [--out bench-out/model-cost] [--rounds 5]

Builds one untrained bundle per recipe (the default network, seeded; timing does not depend on the
weights): the residual recipe's graph (the filter and its squared error), the default recipe's (filter and
head) and the filter with the MSGMS residual, then times them in turns on one ONNX Runtime thread by the
process's CPU time, not the wall clock: on a shared machine other processes stretch the wall time, not the
CPU time a run needs. images/s at 2 threads follow as `ssae edge bench`'s raw figure times the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = {"residual": {}, "default (head)": {"head": True}, "residual msgms": {"residual": "msgms"}}


def build(out: Path, size: int, head: bool = False, residual: str = "mse") -> Path:
    import torch

    from edge.manifest import Provenance
    from train.export import InferenceGraph, export_bundle
    from train.head import HeadConfig, SegHead
    from train.model import FilterAE, ModelConfig

    torch.manual_seed(0)
    graph = InferenceGraph(FilterAE(ModelConfig()).eval(), [0.5] * 3, [0.25] * 3, max(1.0, size / 64), residual=residual,
                           head=SegHead(HeadConfig(), 3).eval() if head else None)
    export_bundle(graph, out, height=size, width=size, channels=3, provenance=Provenance(data="none (benchmark)", recipe=out.name),
                  with_torch_program=False)
    return out / "model.onnx"


def cpu_ms_per_image(paths: list[Path], size: int, rounds: int) -> dict[Path, list[float]]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # a spinning thread bills idle CPU time
    sessions = {p: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for p in paths}
    frames = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    out: dict[Path, list[float]] = {p: [] for p in paths}
    for _ in range(rounds):  # in turns, so that a slow spell of the machine hits every variant alike
        for p, sess in sessions.items():
            for _ in range(2):
                sess.run(None, {"frames": frames})
            t0 = time.process_time()
            for _ in range(10):
                sess.run(None, {"frames": frames})
            out[p].append((time.process_time() - t0) / 20 * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "model-cost")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    paths = {name: build(args.out / name.replace(" ", "-").replace("(", "").replace(")", ""), args.size, **kw) for name, kw in VARIANTS.items()}
    times = cpu_ms_per_image(list(paths.values()), args.size, args.rounds)
    base = float(np.median(times[paths["residual"]]))
    print(f"{args.size}x{args.size}, ONNX Runtime CPU time per image on 1 thread (median of {args.rounds} rounds, batch 2):")
    for name, p in paths.items():
        ms = float(np.median(times[p]))
        print(f"  {name:16s} {ms:6.1f} ms  x{ms / base:.2f}  rounds {', '.join(f'{v:.1f}' for v in times[p])}")


if __name__ == "__main__":
    main()
