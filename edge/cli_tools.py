"""Commands of `ssae edge` for this area (see edge/cli.py)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
