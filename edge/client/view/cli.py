"""`ssae edge view`: the operator's web page for one or more daemons (registered in edge/client/cli.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from edge.errors import fail, known_errors, setup_logging


def view(
    endpoints: Annotated[list[str], typer.Argument(help="Daemon publish endpoint(s), e.g. tcp://10.0.0.5:5555.")],
    archive: Annotated[
        Path | None, typer.Option("--archive", help="The daemon's [archive] dir (read only): camera images under the overlays and the gallery of rejects.")
    ] = None,
    review: Annotated[
        Path | None, typer.Option("--review", help="Folder for marked rejects: false_reject/ and confirmed/ (files are copied, never overwritten).")
    ] = None,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="HTTP port of the page.")] = 8080,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; the default serves this box only. 0.0.0.0 opens the page (and marking) to the network.")
    ] = "127.0.0.1",
    history: Annotated[float, typer.Option("--history", min=10, max=3600, help="Seconds of score history in the strip chart.")] = 300.0,
    client_key: Annotated[
        Path | None, typer.Option("--client-key", help="CURVE: this client's NAME.key_secret (from `ssae edge keys`).")
    ] = None,
    server_key: Annotated[Path | None, typer.Option("--server-key", help="CURVE: the daemon's public NAME.key.")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "warning",
) -> None:
    """Serve the operator view: live overlays, verdicts, score chart, inspector health and a gallery of rejects to mark."""
    with known_errors():
        setup_logging(log_level)
        try:
            from edge.client.view.server import ViewServer
        except ImportError as e:
            raise fail(f"`ssae edge view` needs the web stack ({e.name} is missing); install it with pip install 'ssae-inspect[view]'") from None
        from edge.security import curve_client_from_files

        configure = curve_client_from_files(client_key, server_key)
        server = ViewServer(endpoints, archive=archive, review=review, host=host, port=port, history_s=history, configure=configure)
        print(f"operator view on {server.url}  (following {', '.join(endpoints)})", file=sys.stderr, flush=True)
        try:
            server.serve()
        except ValueError as e:  # a malformed endpoint
            server.sock.close()
            raise fail(str(e)) from None
