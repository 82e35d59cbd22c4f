"""Commands of `ssae edge keys` and `ssae adapter …` (see edge/cli.py)."""

from __future__ import annotations

import typer


def register(app: typer.Typer, adapter_app: typer.Typer) -> None:
    pass
