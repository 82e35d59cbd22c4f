"""What the pretrained recipe's graph costs at inference, beside the default recipe's: ONNX Runtime CPU time per image.

    python bench/pretrained_cost.py [--sizes 128,256] [--bank 2606,6000] [--rounds 5] [--out bench-out/pretrained-cost]

Per size, one PatchCore bundle (the real EfficientNet-Lite0 weights, a bank of random vectors of the size a
fit makes: the time depends on the bank's size, not its values; real_cells at 128 px keeps 2606, at 256 px the
cap, 6000) and one untrained default-recipe bundle (bench/model_cost.py), timed in turns on one thread by
the process's CPU time (a shared machine stretches the wall time, not the CPU time a run needs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def build_pretrained(out: Path, size: int, bank: int) -> Path:
    import torch

    from edge.manifest import Provenance
    from train.backbone import load_pretrained
    from train.export import export_bundle
    from train.patchcore import PatchCoreConfig, PatchCoreGraph, PatchFeatures

    feat = PatchFeatures(load_pretrained(), PatchCoreConfig()).eval()
    vectors = torch.randn(bank, feat.dims, generator=torch.Generator().manual_seed(0)).abs()
    graph = PatchCoreGraph(feat, vectors, max(1.0, size / 64)).eval()
    export_bundle(graph, out, height=size, width=size, channels=3, provenance=Provenance(data="none (benchmark)", recipe="pretrained"),
                  with_torch_program=False)
    return out / "model.onnx"


def main() -> None:
    import torch

    from model_cost import build, cpu_ms_per_image

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--bank", default="2606,6000", help="bank size per size")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "pretrained-cost")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    sizes = [int(v) for v in args.sizes.split(",")]
    banks = [int(v) for v in args.bank.split(",")]
    for size, bank in zip(sizes, banks):
        pre = build_pretrained(args.out / f"pretrained-{size}", size, bank)
        default = build(args.out / f"default-{size}", size, head=True)
        times = cpu_ms_per_image([pre, default], size, args.rounds)
        print(f"{size}x{size}, ONNX Runtime CPU time per image on 1 thread (median of {args.rounds} rounds, batch 2):")
        for name, p in ((f"pretrained (bank {bank})", pre), ("default (head)", default)):
            ms = float(np.median(times[p]))
            print(f"  {name:22s} {ms:6.1f} ms  {1000 / ms:6.1f} images/s  rounds {', '.join(f'{v:.1f}' for v in times[p])}")


if __name__ == "__main__":
    main()
