"""`ssae adapter …`: the adapters that drive a PLC from the daemon's stream (see edge/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from edge.errors import known_errors, setup_logging


def register(adapter_app: typer.Typer) -> None:
    adapter_app.command("modbus")(modbus)


def modbus(
    config: Path = typer.Argument(..., help="Adapter config, e.g. configs/adapter/modbus.toml."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    """Follow the daemon's stream and drive a reject gate over Modbus TCP (fails safe on lost heartbeats)."""
    import logging
    import signal
    import threading

    from edge.adapter.config import load_adapter_config
    from edge.adapter.modbus import run_modbus_adapter
    from edge.sdnotify import Notifier

    with known_errors():
        setup_logging(log_level)
        if log_level.lower() != "debug":
            # pymodbus logs every refused connect as an ERROR; the adapter's own line says it once with the retry time.
            logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        cfg = load_adapter_config(config)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())  # finish the loop: the PLC gets the fail-safe state
        notifier = Notifier()
        code = run_modbus_adapter(cfg, stop, notify=notifier.notify)
    raise typer.Exit(code=code)
