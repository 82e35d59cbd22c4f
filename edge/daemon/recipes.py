"""Recipes: the bundles one daemon can judge with, one product each, and the choice among them.

    recipe = "a"                                 # the one to start with (default: the first listed)
    [[recipes]]
    name = "a"
    bundle = "/opt/ssae/bundles/part-a"
    [[recipes]]
    name = "b"
    bundle = "/opt/ssae/bundles/part-b"
    image_threshold = 0.02                       # optional, overrides that bundle's calibration

A config with a single `bundle = ...` is one recipe, named by `recipe` ("default" when unset), so every
frame header names a recipe either way. The PLC, the control endpoint (`SelectRecipe`) or
`ssae edge recipe CONTROL NAME` switches; the daemon loads and test-runs the new bundle on the side and
swaps it in between two batches (the reload path of edge/daemon/daemon.py): no frame is judged by a
half-loaded model, and a bundle that fails its checks is refused while the running recipe stays.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from edge.strict import Strict

RecipeName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)]
SINGLE = "default"  # the name of a config's single `bundle` when `recipe` does not name it


class RecipeConfig(Strict, kw_only=True):
    name: RecipeName  # in every frame header and the heartbeat; what `SelectRecipe` and the CLI name
    bundle: str  # the folder with model.onnx and manifest.json
    image_threshold: Annotated[float, Meta(ge=0)] | None = None  # overrides this bundle's calibration
    pixel_threshold: Annotated[float, Meta(ge=0)] | None = None


def check_recipes(bundle: str, recipes: list[RecipeConfig], recipe: str, thresholds_set: bool) -> None:
    """The cross-field rules of the daemon config's bundle / recipes / recipe keys (ValueError names the fix)."""
    if not bundle and not recipes:
        raise ValueError("bundle is missing; add it (the bundle folder), or list the products as [[recipes]] (see configs/edge/line.example.toml)")
    if bundle and recipes:
        raise ValueError("bundle and [[recipes]] are both set; keep one: a single bundle, or every bundle as a [[recipes]] entry")
    if recipes and thresholds_set:
        raise ValueError("image_threshold / pixel_threshold at the top apply to a single bundle; with [[recipes]] set them per recipe (recipes[i].image_threshold)")
    names = [r.name for r in recipes]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ValueError(f"recipes[{i}].name = {name!r} is used twice; give every recipe its own name")
    if recipes and recipe and recipe not in names:
        raise ValueError(f"recipe = {recipe!r} is not one of the [[recipes]] ({', '.join(names)}); name one of them")


def recipe_list(bundle: str, recipes: list[RecipeConfig], recipe: str, image: float | None, pixel: float | None) -> list[RecipeConfig]:
    """Every recipe of a config in order; a single bundle becomes one recipe with the top-level thresholds."""
    if recipes:
        return list(recipes)
    return [RecipeConfig(name=recipe or SINGLE, bundle=bundle, image_threshold=image, pixel_threshold=pixel)]


def pick(recipes: list[RecipeConfig], name: str = "", number: int = 0) -> RecipeConfig:
    """The recipe a request names (by name, else by number from 1); ValueError says what there is."""
    names = ", ".join(f"{i}={r.name}" for i, r in enumerate(recipes, 1))
    if name:
        for r in recipes:
            if r.name == name:
                return r
        raise ValueError(f"no recipe named {name!r}; the config lists {names}")
    if 1 <= number <= len(recipes):
        return recipes[number - 1]
    raise ValueError(f"recipe number {number} is not in the config (1..{len(recipes)}: {names}); 0 means none")


def same_recipe(recipes: list[RecipeConfig], name: str) -> RecipeConfig:
    """The running recipe in a re-read config: by name, or a single bundle's whatever its name is now."""
    for r in recipes:
        if r.name == name:
            return r
    if len(recipes) == 1:
        return recipes[0]
    raise ValueError(f"the running recipe {name!r} is no longer in the config; select one of {', '.join(r.name for r in recipes)} first, or put it back")
