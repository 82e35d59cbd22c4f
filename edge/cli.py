"""`ssae edge …` and `ssae adapter …`: thin commands that parse, load config and call one function.

Each area registers its commands from its own module so that the daemon, the tools, deployment and
the NVIDIA path can grow without editing one shared file.
"""

from __future__ import annotations

import typer

from edge import cli_daemon, cli_deploy, cli_nvidia, cli_tools

app = typer.Typer(no_args_is_help=True)
adapter_app = typer.Typer(no_args_is_help=True)

cli_daemon.register(app)  # run
cli_tools.register(app)  # tap, bench, demo
cli_deploy.register(app, adapter_app)  # keys; adapter modbus
cli_nvidia.register(app)  # build-engine, fp16-check
