"""The training loop: one flat function, from good images to an exported bundle.

Under `torchrun` (RANK/WORLD_SIZE set) it trains with DistributedDataParallel (gloo on CPU, nccl on
GPU); each rank draws its own batches (train/batches.py: seeded by seed, rank and step), and only
rank 0 logs, saves checkpoints and exports. Checkpoints hold the recipe, step, model and optimizer
states, so `--resume` continues exactly where the run stopped; they are written atomically, so a power cut
leaves the last one intact, and SIGINT or SIGTERM save one at the step reached before the run stops.
"""

from __future__ import annotations

import copy
import io
import math
import os
import time
from pathlib import Path
from typing import NoReturn

import msgspec
import numpy as np
import torch

from edge.errors import UserError
from edge.files import atomic_write_bytes
from edge.manifest import Calibration, Provenance, ScoreStats
from train.batches import batch_stream, resolve_workers
from train.config import TrainConfig
from train.data import channel_stats, load_images, split_holdout, train_folder, training_view
from train.assemble import assemble_graph, build_detector, graph_for, load_weights, weights
from train.export import InferenceGraph, code_version, export_bundle, now_iso, run_graph
from train.interrupt import StopSignals
from train.loss import head_loss, recon_loss
from train.model import count_params
from train.out_folder import PROVISIONAL_SOURCE, carried_history, check_out

CKPT_NAME = "ckpt.pt"


def work_dir_for(out: Path) -> Path:
    """Checkpoints live beside the bundle, never inside it: the bundle is replaced whole at export."""
    out = Path(out)
    return out.parent / f"{out.name}.work"


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.lr_final_frac + (1 - cfg.lr_final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def comparable(cfg: TrainConfig) -> dict:
    """The recipe minus what may change on resume (length, threads, device, workers, checkpoint cadence, budget)."""
    d = msgspec.to_builtins(cfg)
    for k in ("steps", "threads", "device", "workers", "checkpoint_every", "time_budget_min"):
        d.pop(k)
    return d


def save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, cfg: TrainConfig) -> dict:
    if not path.is_file():
        raise UserError(f"--resume: no checkpoint at {path}; run without --resume to start fresh")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several unrelated types for a damaged file
        raise UserError(f"--resume: {path} is not a readable checkpoint ({e}); delete it to start fresh") from e
    if state.get("comparable") != comparable(cfg):
        theirs, ours = state.get("comparable", {}), comparable(cfg)
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise UserError(
            f"--resume: {path} was made with another recipe (differs in: {', '.join(diff)}); "
            "resume with the same --recipe/--config, or drop --resume to start fresh"
        )
    return state


def provisional_calibration(graph: InferenceGraph, holdout: np.ndarray) -> Calibration | None:
    """A first threshold from held-out good images, so the daemon can judge before on-site calibration."""
    if len(holdout) == 0:
        return None
    amap, scores = run_graph(graph, holdout)
    s = scores.astype(np.float64)
    stats = ScoreStats(count=len(s), mean=float(s.mean()), std=float(s.std()), p50=float(np.median(s)), p99=float(np.quantile(s, 0.99)), max=float(s.max()))
    spread = max(float(s.max() - np.median(s)), 1e-6)
    return Calibration(
        image_threshold=float(s.max() + 0.5 * spread),  # above every held-out good, with a margin
        pixel_threshold=float(s.max() + 0.5 * spread),
        method="training-holdout (provisional: run `ssae calibrate fit` on site)",
        n_good=len(s),
        good_stats=stats,
        created=now_iso(),
        source=PROVISIONAL_SOURCE,
    )


def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * net, with d ramping up as (1+t)/(10+t) so the random init washes out early.

    BatchNorm running statistics are copied, not averaged: they already are moving averages.
    """
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), net.parameters()):
            pe.lerp_(p, 1 - d)
        for be, b in zip(ema.buffers(), net.buffers()):
            be.copy_(b)


def pick_device(wanted: str) -> torch.device:
    """This rank's GPU (LOCAL_RANK under torchrun) unless the recipe says cpu or torch sees none."""
    if wanted == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device = \"cuda\" but torch {torch.__version__} sees no CUDA GPU: use --device auto or cpu, "
                        "or install a CUDA build of torch on this box")
    if wanted == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    local, count = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
    if local >= count:
        raise UserError(f"LOCAL_RANK is {local} but this box has {count} GPU(s): start torchrun with --nproc-per-node={count} "
                        "or fewer, or hide the GPUs (CUDA_VISIBLE_DEVICES=) to train on CPU processes")
    torch.cuda.set_device(local)  # before the process group, so NCCL binds this rank to its own GPU
    return torch.device("cuda", local)


def setup_distributed(device: torch.device) -> tuple[int, int]:
    if "RANK" not in os.environ:
        return 0, 1
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def over_budget(elapsed_s: float, budget_min: float, world: int, device: torch.device) -> bool:
    """All ranks must stop at the same step, or the next collective hangs: rank 0's clock decides."""
    flag = torch.tensor([float(elapsed_s > budget_min * 60)], device=device)  # nccl takes GPU tensors only
    if world > 1:
        torch.distributed.broadcast(flag, src=0)
    return bool(flag.item())


def stopping(stop: StopSignals, world: int, device: torch.device) -> bool:
    """Whether a stop signal arrived; under torchrun any rank's counts, so that all stop at the same step."""
    if world == 1:
        return stop.received is not None
    flag = torch.tensor([float(stop.received is not None)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def on_disk(ckpt_path: Path, saved_step: int | None) -> str:
    """What a stopped run leaves to continue from, claiming only a file that is there."""
    if saved_step is not None and ckpt_path.is_file():
        return f"{ckpt_path} holds step {saved_step}: run the same command with --resume to continue from there"
    return "this run wrote no checkpoint: run the same command again to start over"


def interrupted(signame: str, step: int, steps: int, save, ckpt_path: Path, saved_step: int | None, world: int) -> NoReturn:
    """Checkpoint the step reached (save is None when that step is already on disk), then stop naming the file."""
    error = None
    if save is not None:
        try:
            save(step)
        except OSError as e:  # disk full, folder gone: say so, and what is still there
            error = e
    if world > 1:
        torch.distributed.barrier()  # no rank exits (torchrun then stops the rest) before rank 0's file is written
    if error is not None:
        raise UserError(f"interrupted ({signame}) at step {step}/{steps}, and the checkpoint could not be written ({error}); "
                        f"{on_disk(ckpt_path, saved_step)}")
    raise UserError(f"interrupted ({signame}) at step {step}/{steps}; saved {ckpt_path} (step {step}): "
                    "run the same command with --resume to finish")


def fit(data: Path, out: Path, cfg: TrainConfig, *, category: str | None = None, resume: bool = False, progress: bool = True,
        force: bool = False) -> Path:
    """Train on the good images under data, export the bundle to out, return out.

    SIGINT/SIGTERM stop it between two steps with a checkpoint of that step (train/interrupt.py).
    force: replace a bundle calibrated on site (its calibration is kept in the new manifest's history).
    """
    with StopSignals() as stop:
        return _fit(Path(data), Path(out), cfg, stop, category=category, resume=resume, progress=progress, force=force)


def _fit(data: Path, out: Path, cfg: TrainConfig, stop: StopSignals, *, category: str | None, resume: bool, progress: bool, force: bool) -> Path:
    folder = train_folder(data, category)
    work = work_dir_for(out)
    ckpt_path = work / CKPT_NAME
    replaced = check_out(out, data, ckpt_path, force=force)  # every refusal before anything is written
    images, _ = load_images(folder, cfg.image_size)  # (N, H, W, C) uint8: C is what the bundle takes
    n, height, width, channels = images.shape
    if n < 2:
        raise UserError(f"{folder} holds {n} image; training needs at least 2 good images (ideally 100+)")
    if cfg.recipe == "pretrained":  # no training loop: a memory bank of pretrained features (train/fit_pretrained.py)
        from train.fit_pretrained import fit_pretrained

        return fit_pretrained(data, out, cfg, stop, images, ckpt_path, category=category, resume=resume, force=force)
    train_images = training_view(images)  # a gray set trains exactly as its 3-channel copy
    if cfg.model.in_channels != train_images.shape[3]:
        cfg = msgspec.structs.replace(cfg, model=msgspec.structs.replace(cfg.model, in_channels=train_images.shape[3]))
    if height % 16 or width % 16:
        raise UserError(f"images are {width}x{height}; the network needs sides divisible by 16: pass --image-size (e.g. {max(16, round(height / 16) * 16)})")
    state = load_checkpoint(ckpt_path, cfg) if resume else None

    device = pick_device(cfg.device)
    rank, world = setup_distributed(device)
    torch.set_flush_denormal(True)  # denormals made CPU steps 5-10x slower
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    train_idx, hold_idx = split_holdout(n, cfg.holdout, np.random.default_rng(cfg.seed))
    mean, std = channel_stats(train_images[train_idx])
    mean_d, std_d = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (mean, std))
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    net = build_detector(cfg).to(device, memory_format=memory_format)  # the filter, and its head if the recipe has one
    ema = copy.deepcopy(net).eval() if cfg.ema_decay else None  # the averaged weights, never trained directly
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, elapsed, saved_step = 0, 0.0, None
    if state is not None:
        load_weights(net, state, "model", "head")
        if ema is not None:
            load_weights(ema, state, "ema", "ema_head")
        opt.load_state_dict(state["optimizer"])
        step, elapsed = state["step"], state["elapsed_s"]
        saved_step = step
        torch.set_rng_state(state["torch_rng"])
    model = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net
    per_rank = max(1, cfg.batch_size // world)
    workers = resolve_workers(cfg.workers, device.type == "cuda", world)
    batches = batch_stream(train_images, train_idx, cfg, rank=rank, per_rank=per_rank, start=step, workers=workers, pin=device.type == "cuda")

    if rank == 0:
        work.mkdir(parents=True, exist_ok=True)
        head_m = f" (head {count_params(net.head) / 1e6:.2f} M)" if net.head is not None else ""
        print(f"training {count_params(net) / 1e6:.2f} M params{head_m} on {len(train_idx)} images {width}x{height}x{channels} "
              f"(holdout {len(hold_idx)}), recipe {cfg.recipe}, {cfg.steps} steps x {cfg.batch_size}, ranks {world}, on {device}, batch workers {workers}, "
              f"torch threads {torch.get_num_threads()}", flush=True)

    def checkpoint(at_step: int) -> None:
        nonlocal saved_step
        if rank == 0:
            save_checkpoint(ckpt_path, {"comparable": comparable(cfg), "config": msgspec.to_builtins(cfg), "step": at_step,
                                        "elapsed_s": elapsed, **weights(net, "model", "head"), "optimizer": opt.state_dict(),
                                        **(weights(ema, "ema", "ema_head") if ema is not None else {}),
                                        "torch_rng": torch.get_rng_state(), "mean": mean, "std": std, "width": width,
                                        "input_channels": channels})
            saved_step = at_step

    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, unit="step", dynamic_ncols=True, mininterval=1.0)
    model.train()
    t_last, ema_loss, stopped_early = time.perf_counter(), None, False
    t_start, step_start = t_last, step
    halted = stopping(stop, world, device)  # a signal while the images loaded
    try:
        for xin, target, weight, label in ([] if halted else batches):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            xin, target, weight, label = (t.to(device, non_blocking=True) for t in (xin, target, weight, label))  # async from pinned memory
            xin = ((xin - mean_d) / std_d).contiguous(memory_format=memory_format)
            target = ((target - mean_d) / std_d).contiguous(memory_format=memory_format)
            recon, logits = model(xin)
            loss = recon_loss(recon, target, weight)
            if logits is not None:
                loss = loss + cfg.head.loss_weight * head_loss(logits, label, cfg.head)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            if ema is not None:
                ema_update(ema, net, cfg.ema_decay, step)
            step += 1
            now = time.perf_counter()
            elapsed += now - t_last
            t_last = now
            ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
            rate = (step - step_start) * cfg.batch_size / max(now - t_start, 1e-9)  # images/s this session
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{ema_loss:.4f}", img_s=f"{rate:.1f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoint(step)
                if bar is None and rank == 0:  # logs (CI, benchmarks, systemd) get the loss curve instead of a bar
                    eta_min = (cfg.steps - step) * cfg.batch_size / max(rate, 1e-9) / 60
                    print(f"step {step}/{cfg.steps} loss {ema_loss:.5f} {rate:.1f} images/s ETA {eta_min:.1f} min", flush=True)
            if cfg.time_budget_min and step % 10 == 0 and step < cfg.steps and over_budget(elapsed, cfg.time_budget_min, world, device):
                stopped_early = True
                checkpoint(step)
                break
            if stopping(stop, world, device):
                halted = True
                break
    except KeyboardInterrupt:  # a second signal, mid-step: that step is lost, say what is on disk
        if bar is not None:
            bar.close()
        raise UserError(f"interrupted twice, in step {step + 1}, before it could be saved; {on_disk(ckpt_path, saved_step)}") from None
    if bar is not None:
        bar.close()
    if halted:
        interrupted(stop.received or "a signal to another rank", step, cfg.steps, checkpoint if saved_step != step else None,
                    ckpt_path, saved_step, world)
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        net = ema if ema is not None else net  # what the bundle ships
        net.eval().cpu().to(memory_format=torch.contiguous_format)
        sample = images[np.random.default_rng(cfg.seed).permutation(n)[:128]]
        graph, measured = assemble_graph(net, cfg, mean, std, width, sample, input_channels=channels)
        final = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        save_checkpoint(ckpt_path, {**final, **measured})  # the file rebuilds the exported graph
        provenance = Provenance(
            data=str(data), category=category, recipe=cfg.recipe, recipe_config=msgspec.to_builtins(cfg), seed=cfg.seed,
            steps=step, train_seconds=round(elapsed, 1), code_version=code_version(), created=now_iso(),
            metrics={"train_loss": float(ema_loss or 0.0), "images_per_s": step * cfg.batch_size / max(elapsed, 1e-9),
                     "stopped_early": float(stopped_early)},
        )
        calibration = provisional_calibration(graph, images[hold_idx])
        try:
            replaced = check_out(out, data, ckpt_path, force=force)  # again: --out may have changed (or been calibrated) meanwhile
        except UserError as e:
            raise UserError(f"{e}; the trained weights are in {ckpt_path}: run again with --resume to export them") from None
        history, kept_cal = carried_history(replaced, f"fitted for model {replaced.model_id[:12]}, replaced by `ssae train fit --force` {now_iso()}"
                                            if replaced else "")
        report_as = f"calibration-report-{replaced.model_id[:12]}.png" if kept_cal is not None else None
        try:
            with stop.finishing():
                _, kept_files = export_bundle(graph, out, height=height, width=width, channels=channels, provenance=provenance,
                                              calibration=calibration, history=history, report_as=report_as)
        except UserError as e:  # --out changed while training (checked again at the swap)
            raise UserError(f"{e}; the trained weights are in {ckpt_path}: run again with --resume to export them") from None
        print(f"bundle written to {out} ({step} steps, {elapsed / 60:.1f} min{', stopped at the time budget' if stopped_early else ''}); "
              + (f"its calibration is provisional ({calibration.n_good} held-out images)" if calibration else "it has no calibration (holdout = 0)")
              + ": calibrate on site with `ssae calibrate fit`", flush=True)
        if kept_cal is not None:
            print(f"replaced a bundle calibrated on site: its calibration ({kept_cal.method}, {kept_cal.created or 'undated'}) is kept in the "
                  f"manifest history{f', its report as {report_as}' if (out / report_as).exists() else ''}; it was fitted for the old model, "
                  "so calibrate the new one on site", flush=True)
        if kept_files:
            print(f"kept {len(kept_files)} file(s) of yours from the old bundle: {', '.join(kept_files[:5])}{' …' if len(kept_files) > 5 else ''}", flush=True)
        if stop.received is not None:
            print(f"{stop.received} arrived during the export; the export was finished first", flush=True)
    if world > 1:
        torch.distributed.destroy_process_group()
    return out


def graph_from_checkpoint(path: Path, **head_overrides) -> InferenceGraph:
    """Rebuild the exported chain from a checkpoint alone: the file carries its recipe.

    head_overrides (e.g. weight=0.5) re-fuse the map without retraining, to measure another mix.
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    cfg = msgspec.convert(state["config"], type=TrainConfig)
    if head_overrides:
        cfg = msgspec.structs.replace(cfg, head=msgspec.structs.replace(cfg.head, **head_overrides))
    net = build_detector(cfg)
    load_weights(net, state, "ema" if "ema" in state else "model", "ema_head" if "ema" in state else "head")  # the exported weights
    net.eval()
    return graph_for(net, cfg, state["mean"], state["std"], state.get("width") or 0, state)  # state carries input_channels
