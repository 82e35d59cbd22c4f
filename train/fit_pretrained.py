"""`ssae train fit --recipe pretrained`: fit the PatchCore memory bank (train/patchcore.py) and export the bundle.

No gradient step: the good images pass once through the ImageNet backbone, a coreset of their patch vectors
becomes the bank, and the chain is exported through the same path as a trained recipe (export_bundle, the
manifest with its provenance, the provisional threshold from held-out good images), so calibration and the
edge daemon take it unchanged. Nothing is written before the bank is fitted; there is no checkpoint to
resume, since refitting takes what resuming would.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import numpy as np
import torch

from edge.errors import UserError
from edge.manifest import Provenance
from train.backbone import load_pretrained
from train.config import TrainConfig
from train.data import split_holdout
from train.export import code_version, export_bundle, now_iso
from train.interrupt import StopSignals
from train.loop import provisional_calibration
from train.out_folder import carried_history, check_out
from train.patchcore import build_graph


def fit_pretrained(data: Path, out: Path, cfg: TrainConfig, stop: StopSignals, images: np.ndarray, ckpt_path: Path, *,
                   category: str | None, resume: bool, force: bool) -> Path:
    """images: the good images, uint8 (N, H, W, C); ckpt_path: only checked (check_out), never written."""
    if resume:
        raise UserError("--resume: the pretrained recipe trains nothing and keeps no checkpoint; run the same command without --resume")
    if cfg.device == "cuda":
        raise UserError("device = \"cuda\": the pretrained recipe fits on the CPU (a minute or two); use --device auto or cpu")
    n, height, width, channels = images.shape
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train_idx, hold_idx = split_holdout(n, cfg.holdout, np.random.default_rng(cfg.seed))
    print(f"fitting a PatchCore bank (EfficientNet-Lite0 ImageNet features, blocks {list(cfg.patchcore.layers)}) on {len(train_idx)} images "
          f"{width}x{height}x{channels} (holdout {len(hold_idx)}), torch threads {torch.get_num_threads()}", flush=True)
    t0 = time.perf_counter()
    graph, measured = build_graph(images[train_idx], load_pretrained(), cfg.patchcore, seed=cfg.seed, smooth_sigma_px=cfg.sigma_px(width))
    elapsed = time.perf_counter() - t0
    if stop.received is not None:
        raise UserError(f"interrupted ({stop.received}) while fitting the bank; nothing was written: run the same command again")
    calibration = provisional_calibration(graph, images[hold_idx])
    provenance = Provenance(
        data=str(data), category=category, recipe=cfg.recipe, recipe_config=msgspec.to_builtins(cfg), seed=cfg.seed,
        steps=0, train_seconds=round(elapsed, 1), code_version=code_version(), created=now_iso(),
        metrics={f"patchcore.{k}": v for k, v in measured.items()},
    )
    replaced = check_out(out, data, ckpt_path, force=force)  # again: --out may have changed (or been calibrated) meanwhile
    history, kept_cal = carried_history(replaced, f"fitted for model {replaced.model_id[:12]}, replaced by `ssae train fit --force` {now_iso()}"
                                        if replaced else "")
    report_as = f"calibration-report-{replaced.model_id[:12]}.png" if kept_cal is not None else None
    with stop.finishing():
        _, kept_files = export_bundle(graph, out, height=height, width=width, channels=channels, provenance=provenance,
                                      calibration=calibration, history=history, report_as=report_as)
    print(f"bundle written to {out} (bank of {int(measured['bank_size'])} patch vectors of {int(measured['patches'])}, "
          f"{int(measured['feature_dims'])} dims, {elapsed:.0f} s); "
          + (f"its calibration is provisional ({calibration.n_good} held-out images)" if calibration else "it has no calibration (holdout = 0)")
          + ": calibrate on site with `ssae calibrate fit`", flush=True)
    if kept_cal is not None:
        print(f"replaced a bundle calibrated on site: its calibration ({kept_cal.method}) is kept in the manifest history; "
              "calibrate the new one on site", flush=True)
    if kept_files:
        print(f"kept {len(kept_files)} file(s) of yours from the old bundle: {', '.join(kept_files[:5])}", flush=True)
    return out
