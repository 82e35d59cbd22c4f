"""The training recipe: TOML defaults in step with the code, recipes, strict validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.errors import UserError
from train.config import TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "train"


def test_default_toml_equals_code_defaults():
    assert load_config(CONFIGS / "default.toml") == TrainConfig()


def test_comparison_recipes_by_flag_and_by_file():
    for name in ("plain", "denoising"):
        by_flag = load_config(None, name)
        assert by_flag == load_config(CONFIGS / f"{name}.toml")
        assert by_flag.recipe == name and not by_flag.corruption.enabled
    assert load_config(None, "plain").noise_std == 0.0
    den = load_config(None, "denoising")
    assert den.noise_std > 0 and not den.noise_in_target


def test_overrides_and_unknown_keys(tmp_path):
    assert load_config(None, None, steps=7, image_size=None).steps == 7
    bad = tmp_path / "bad.toml"
    bad.write_text("stepz = 3\n")
    with pytest.raises(UserError, match="stepz"):
        load_config(bad)
    bad.write_text("[corruption]\nopacity_max = 'high'\n")
    with pytest.raises(UserError, match=r"corruption.opacity_max"):
        load_config(bad)
    bad.write_text("steps = = 3\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(UserError, match="unknown"):
        load_config(None, "fancy")
