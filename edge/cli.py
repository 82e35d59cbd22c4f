"""`ssae edge …` and `ssae adapter …` commands: thin wrappers that parse, load config and call one function."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
adapter_app = typer.Typer(no_args_is_help=True)
