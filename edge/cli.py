"""`ssae edge …` and `ssae adapter …`: each part of edge/ registers its own commands (its cli.py), so the
daemon, the client side, the backends, the adapters and the tools grow without editing one shared file.
The key command lives here because keys belong to the contract every part shares (edge/security.py).
"""

from __future__ import annotations

from pathlib import Path

import typer

from edge.adapter import cli as adapter_cli
from edge.backends import cli as backends_cli
from edge.client import cli as client_cli
from edge.daemon import cli as daemon_cli
from edge.errors import known_errors
from edge.tools import cli as tools_cli

app = typer.Typer(no_args_is_help=True)
adapter_app = typer.Typer(no_args_is_help=True)


def keys(
    directory: Path = typer.Argument(..., help="Folder for the key files, e.g. /etc/ssae/keys (created if missing)."),
    name: str = typer.Option(..., "--name", help="Key name: writes NAME.key (public) and NAME.key_secret (mode 0600)."),
    force: bool = typer.Option(False, "--force", help="Replace existing files of that name (peers then need the new public key)."),
) -> None:
    """Create a CURVE key pair for the daemon or a client (adapter, tap, calibrate)."""
    from edge.security import create_key_pair

    with known_errors():
        files = create_key_pair(directory, name, force=force)
    typer.echo(f"public key: {files.public}  (give this file to the peer)")
    typer.echo(f"secret key: {files.secret}  (keep here; readable by the service user only)")


app.command("keys")(keys)
daemon_cli.register(app)  # run
client_cli.register(app)  # tap
tools_cli.register(app)  # bench, demo, fp16-check
backends_cli.register(app)  # build-engine
adapter_cli.register(adapter_app)  # adapter modbus
