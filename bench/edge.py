"""Edge daemon benchmark: raw ONNX Runtime vs the daemon end to end, latency and memory; BENCHMARKS.md section.

    python bench/edge.py [--bundle B] [--frames 600] [--latency-frames 200] [--rounds 5] [--work bench-out/edge] [--no-write]

The same code as `ssae edge bench` (edge/bench.py). Without --bundle it times an untrained bundle of the
default model at 256x256 (timing does not depend on weights). Writes the "Edge daemon" section of
BENCHMARKS.md (only that section) unless --no-write, and the figures as JSON beside the work files.
Run it on an otherwise idle machine: other load shows up in every figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import msgspec  # noqa: E402

from edge.bench import format_markdown, run_bench, write_section  # noqa: E402
from edge.bench_defaults import DEFAULTS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None, help="bundle to time (default: untrained default model)")
    parser.add_argument("--size", type=int, default=256, help="input size of the bundle built without --bundle")
    parser.add_argument("--frames", type=int, default=DEFAULTS.frames, help="frames in the end-to-end video")
    parser.add_argument("--latency-frames", type=int, default=DEFAULTS.latency_frames, help="frames in the paced latency run")
    parser.add_argument("--rounds", type=int, default=DEFAULTS.rounds, help="raw-then-daemon rounds; the median round's ratio is reported")
    parser.add_argument("--measure-s", type=float, default=DEFAULTS.measure_s, help="seconds per batch size in the raw timing")
    parser.add_argument("--work", type=Path, default=ROOT / "bench-out" / "edge", help="folder for bundle, videos, logs")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    command = "python bench/edge.py" + "".join(f" {a}" for a in sys.argv[1:])
    result = run_bench(bundle=args.bundle, work=args.work, size_px=args.size, frames=args.frames, latency_frames=args.latency_frames,
                       measure_s=args.measure_s, rounds=args.rounds, command=command, progress=lambda line: print(line, file=sys.stderr, flush=True))
    markdown = format_markdown(result)
    (args.work / "edge-bench.json").write_bytes(msgspec.json.encode(result))
    if not args.no_write:
        write_section(ROOT / "BENCHMARKS.md", markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
