"""The one console entry point: `ssae train …`, `ssae calibrate …`, `ssae edge …`, `ssae adapter …`.

Each sub-app lives in its package's cli.py and imports its heavy dependencies inside the command,
so `ssae edge --help` runs on a box without torch or a GPU stack.
"""

from __future__ import annotations

import typer

from calibrate.cli import app as calibrate_app
from edge.cli import adapter_app
from edge.cli import app as edge_app
from train.cli import app as train_app

app = typer.Typer(no_args_is_help=True, help="Self-supervised autoencoder inspection: train, calibrate, run at the line.")
app.add_typer(train_app, name="train", help="Train a model offline, evaluate it, export a bundle.")
app.add_typer(calibrate_app, name="calibrate", help="Set and check thresholds on site.")
app.add_typer(edge_app, name="edge", help="Run inspection at the line and publish verdicts over ZeroMQ.")
app.add_typer(adapter_app, name="adapter", help="Drive a PLC from the daemon's stream.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
