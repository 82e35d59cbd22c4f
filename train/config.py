"""The training recipe: every knob of `ssae train fit` in one typed struct, read from TOML.

Defaults here equal configs/train/default.toml, which documents each one with its reason (a test
keeps the two in step). `--recipe residual|plain|denoising|pretrained` applies the comparison recipes on top of the
defaults; `--config FILE` then overrides any key. Unknown or ill-typed keys are refused with their path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from edge.errors import UserError
from train.corrupt import CorruptionConfig
from train.head import HeadConfig
from train.model import ModelConfig
from train.patchcore import PatchCoreConfig
from train.residual import ResidualName

RecipeName = Literal["default", "head", "residual", "plain", "denoising", "pretrained"]


class TrainConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    recipe: RecipeName = "default"
    seed: int = 0
    image_size: Annotated[int, Meta(ge=16, le=4096)] | None = None  # None: the images' own size
    steps: Annotated[int, Meta(ge=1)] = 2000
    batch_size: Annotated[int, Meta(ge=1, le=1024)] = 16
    lr: Annotated[float, Meta(gt=0)] = 2e-3
    lr_final_frac: Annotated[float, Meta(ge=0, le=1)] = 0.02
    warmup_steps: Annotated[int, Meta(ge=0)] = 100
    weight_decay: Annotated[float, Meta(ge=0)] = 1e-4
    grad_clip: Annotated[float, Meta(gt=0)] = 1.0
    ema_decay: Annotated[float, Meta(ge=0, lt=1)] = 0.0  # 0: export the last weights; else their moving average
    noise_std: Annotated[float, Meta(ge=0, le=1)] = 0.02
    noise_in_target: bool = True
    region_weight: Annotated[float, Meta(ge=1)] = 3.0
    hflip: bool = False
    vflip: bool = False
    rot90: bool = False
    holdout: Annotated[float, Meta(ge=0, lt=0.5)] = 0.1
    smooth_sigma_px: Annotated[float, Meta(ge=0)] = 0.0  # 0: auto, width / 64 (at least 1 px)
    residual: ResidualName = "mse"  # the repair's distance from the input (train/residual.py)
    checkpoint_every: Annotated[int, Meta(ge=1)] = 200
    time_budget_min: Annotated[float, Meta(ge=0)] = 19.0  # 0: no budget
    threads: Annotated[int, Meta(ge=0)] = 0  # 0: all cores; waiting threads sleep (train/cli.py): spinning ones collapse beside other work
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: the GPU (LOCAL_RANK under torchrun) if torch sees one
    workers: Annotated[int, Meta(ge=-1, le=64)] = -1  # batch-making processes; -1: auto (0 on CPU, up to 8 with a GPU)
    channels_last: bool = True
    # The default is the seed paper's corruption and no head: the head recipe ("head", which adds the learned
    # comparator and the near-distribution fills and Poisson blends of train/fills.py) has not yet measured better
    # on every category (BENCHMARKS.md), and the default is whichever does.
    corruption: CorruptionConfig = CorruptionConfig()
    model: ModelConfig = ModelConfig()
    head: HeadConfig = HeadConfig(enabled=False)
    patchcore: PatchCoreConfig = PatchCoreConfig()  # the pretrained recipe only (train/patchcore.py)

    def __post_init__(self):
        if self.head.enabled and not self.corruption.enabled:
            raise msgspec.ValidationError("head.enabled = true needs corruption.enabled = true (the head learns the corruption's "
                                          "mask); set [head] enabled = false, or enable the corruption")

    def sigma_px(self, width: int) -> float:
        return self.smooth_sigma_px or max(1.0, width / 64)


# The recipes: same network and schedule. "head" adds the learned comparator (train/head.py) and the
# near-distribution fills; "residual" names the default's method (the seed paper's: the filter scored by its
# squared error) for comparisons; "plain" and "denoising" change its self-supervision.
_NO_HEAD = {"head": {"enabled": False}}
_PAPER_CORRUPTION = {"fill_near": 0.0, "poisson": 0.0}
RECIPES: dict[str, dict] = {
    "default": {},
    "head": {"recipe": "head", "head": {"enabled": True}, "corruption": {"fill_near": 1.0, "poisson": 0.3}},
    "residual": {"recipe": "residual", **_NO_HEAD, "corruption": _PAPER_CORRUPTION},
    "plain": {"recipe": "plain", **_NO_HEAD, "corruption": {"enabled": False, **_PAPER_CORRUPTION}, "noise_std": 0.0, "region_weight": 1.0},
    "denoising": {"recipe": "denoising", **_NO_HEAD, "corruption": {"enabled": False, **_PAPER_CORRUPTION}, "noise_std": 0.1,
                  "noise_in_target": False, "region_weight": 1.0},
    # Optional, not the default: no training, a PatchCore memory bank of ImageNet features (train/patchcore.py).
    "pretrained": {"recipe": "pretrained", **_NO_HEAD, "corruption": {"enabled": False}},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: Path | None = None, recipe: str | None = None, **overrides) -> TrainConfig:
    """Defaults <- recipe <- TOML file <- command-line overrides (None values ignored)."""
    raw = msgspec.to_builtins(TrainConfig())
    if recipe is not None:
        if recipe not in RECIPES:
            raise UserError(f"--recipe {recipe!r} is unknown; use one of {', '.join(RECIPES)}")
        raw = _merge(raw, RECIPES[recipe])
    where = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"--config {path} does not exist; pass a TOML file like configs/train/default.toml")
        try:
            file_cfg = msgspec.toml.decode(path.read_bytes())
        except msgspec.DecodeError as e:
            raise UserError(f"{path}: not valid TOML ({e}); fix the syntax") from e
        if recipe is not None and file_cfg.get("recipe", recipe) != recipe:
            raise UserError(f"{path} sets recipe = {file_cfg['recipe']!r} but --recipe is {recipe!r}; drop one of them")
        file_recipe = file_cfg.get("recipe")
        if recipe is None and file_recipe in RECIPES:
            raw = _merge(raw, RECIPES[file_recipe])
        raw = _merge(raw, file_cfg)
        where = str(path)
    raw = _merge(raw, {k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(raw, type=TrainConfig)
    except msgspec.ValidationError as e:
        raise UserError(f"{where}: {e}; see configs/train/default.toml for the keys and their types") from e
