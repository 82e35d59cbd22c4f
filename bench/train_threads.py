"""Training steps/s of the default recipe at a given thread count: the figures of BENCHMARKS.md,
"Training threads under co-located load" (run by hand; the load beside it is up to the caller).

    python -m bench.train_threads --threads 2 --steps 20
    OMP_WAIT_POLICY=PASSIVE python -m bench.train_threads --threads 2 --steps 20

One step is what `ssae train fit` does on a CPU: make the batch (corruption, noise) and run forward,
backward and AdamW on the default 128 px network, batch 16. OMP_WAIT_POLICY is read when torch loads
its OpenMP runtime, so it is set in the environment, not here.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from train.batches import make_batch
from train.config import TrainConfig
from train.model import FilterAE
from train.synthetic import make_part, rng_for


def steps_per_s(threads: int, steps: int, max_s: float, size_px: int = 128) -> tuple[float, int]:
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    cfg = TrainConfig(image_size=size_px)
    images = np.stack([make_part(size_px, rng_for(0, "part", "train", i)) for i in range(32)])  # (N, H, W, 3) uint8
    torch.manual_seed(0)
    net = FilterAE(cfg.model).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(0)

    def step() -> None:
        xin, target, weight = make_batch(images, rng.integers(0, len(images), cfg.batch_size), cfg, rng)
        loss = (weight * (net(xin.contiguous(memory_format=torch.channels_last)) - target) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up: allocator, oneDNN primitive caches
        step()
    t0, done = time.perf_counter(), 0
    while done < steps and time.perf_counter() - t0 < max_s:
        step()
        done += 1
    return done / (time.perf_counter() - t0), done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--max-s", type=float, default=90.0, help="stop timing after this long (a collapsed run is slow)")
    a = ap.parse_args()
    rate, done = steps_per_s(a.threads, a.steps, a.max_s)
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"threads {a.threads} OMP_WAIT_POLICY {policy}: {rate:.3f} steps/s ({done} steps, load {os.getloadavg()[0]:.2f})", flush=True)


if __name__ == "__main__":
    main()
