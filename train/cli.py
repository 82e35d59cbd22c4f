"""`ssae train …` commands. torch is imported inside the commands, never at module import."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
