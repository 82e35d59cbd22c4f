"""Commands of `ssae edge keys` and `ssae adapter …` (see edge/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from edge.clitools import known_errors


def register(app: typer.Typer, adapter_app: typer.Typer) -> None:
    app.command("keys")(keys)
    adapter_app.command("modbus")(modbus)


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


def modbus(
    config: Path = typer.Argument(..., help="Adapter config, e.g. configs/adapter/modbus.toml."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    """Follow the daemon's stream and drive a reject gate over Modbus TCP (fails safe on lost heartbeats)."""
    import logging
    import signal
    import threading

    from edge.adapter_config import load_adapter_config
    from edge.adapter_modbus import run_modbus_adapter
    from edge.sdnotify import Notifier

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if log_level.lower() != "debug":
        # pymodbus logs every refused connect as an ERROR; the adapter's own line says it once with the retry time.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    with known_errors():
        cfg = load_adapter_config(config)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())  # finish the loop: the PLC gets the fail-safe state
        notifier = Notifier()
        code = run_modbus_adapter(cfg, stop, notify=notifier.notify)
    raise typer.Exit(code=code)
