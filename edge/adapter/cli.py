"""`ssae adapter …`: the adapters that drive a PLC from the daemon's stream (see edge/cli.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import typer

from edge.errors import known_errors, setup_logging


def register(adapter_app: typer.Typer) -> None:
    adapter_app.command("modbus")(modbus)
    adapter_app.command("opcua")(opcua)
    adapter_app.command("opcua-cert")(opcua_cert)
    adapter_app.command("mqtt")(mqtt)


def _stop_on_signals() -> threading.Event:
    """SIGTERM/SIGINT finish the adapter's loop, so that it publishes its fail-safe state before exiting."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def modbus(
    config: Path = typer.Argument(..., help="Adapter config, e.g. configs/adapter/modbus.toml."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    """Follow the daemon's stream and drive a reject gate over Modbus TCP (fails safe on lost heartbeats)."""
    import logging

    from edge.adapter.config import load_adapter_config
    from edge.adapter.modbus import run_modbus_adapter
    from edge.sdnotify import Notifier

    with known_errors():
        setup_logging(log_level)
        if log_level.lower() != "debug":
            # pymodbus logs every refused connect as an ERROR; the adapter's own line says it once with the retry time.
            logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        cfg = load_adapter_config(config)
        stop = _stop_on_signals()  # finish the loop: the PLC gets the fail-safe state
        notifier = Notifier()
        code = run_modbus_adapter(cfg, stop, notify=notifier.notify)
    raise typer.Exit(code=code)


def opcua(
    config: Path = typer.Argument(..., help="Adapter config, e.g. configs/adapter/opcua.toml."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    """Follow the daemon's stream and serve results, counters and state over OPC UA (unavailable on lost heartbeats)."""
    import logging

    from edge.adapter.opcua_config import load_opcua_config
    from edge.sdnotify import Notifier

    with known_errors():
        setup_logging(log_level)
        if log_level.lower() != "debug":
            logging.getLogger("asyncua").setLevel(logging.WARNING)  # asyncua logs every request at INFO
            logging.getLogger("asyncuagds.validate").setLevel(logging.CRITICAL)  # a traceback per untrusted client; the refusal is logged anyway
        cfg = load_opcua_config(config)
        from edge.adapter.opcua import run_opcua_adapter  # asyncua is imported only by this command

        code = run_opcua_adapter(cfg, _stop_on_signals(), notify=Notifier().notify)
    raise typer.Exit(code=code)


def opcua_cert(
    directory: Path = typer.Argument(..., help="Folder for the files, e.g. /etc/ssae/opcua (created if missing)."),
    name: str = typer.Option(..., "--name", help="Writes NAME.der (certificate) and NAME.pem (private key, mode 0600)."),
    uri: str = typer.Option(..., "--uri", help="Application URI, e.g. urn:ssae:inspector (the server's application_uri)."),
    client: bool = typer.Option(False, "--client", help="A client certificate (for a test client) instead of the server's."),
    host: str = typer.Option("", "--host", help="Host name in the certificate; default: this machine's."),
    days: int = typer.Option(5 * 365, "--days", min=1, help="Validity in days."),
    force: bool = typer.Option(False, "--force", help="Replace existing files of that name."),
) -> None:
    """Create a self-signed OPC UA application certificate and key (the adapter's, or a test client's)."""
    with known_errors():
        from edge.adapter.opcua_certs import create_certificate

        files = create_certificate(directory, name, uri=uri, role="client" if client else "server", host=host or None, days=days, force=force)
    typer.echo(f"certificate: {files.certificate}  (give it to the peers that must trust this one)")
    typer.echo(f"private key: {files.private_key}  (keep here; readable by the service user only)")


def mqtt(
    config: Path = typer.Argument(..., help="Bridge config, e.g. configs/adapter/mqtt.toml."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    """Follow the daemon's stream and publish results and state as JSON to an MQTT broker (unavailable on lost heartbeats)."""
    from edge.adapter.mqtt_config import load_mqtt_config
    from edge.sdnotify import Notifier

    with known_errors():
        setup_logging(log_level)
        cfg = load_mqtt_config(config)
        from edge.adapter.mqtt import run_mqtt_bridge  # paho-mqtt is imported only by this command

        code = run_mqtt_bridge(cfg, _stop_on_signals(), notify=Notifier().notify)
    raise typer.Exit(code=code)
