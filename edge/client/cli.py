"""`ssae edge tap`: follow a daemon's stream from the command line; `ssae edge recipe`: switch its product (see edge/cli.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from edge.errors import fail, known_errors


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _out(line: str) -> None:
    print(line, flush=True)


def tap(
    endpoints: Annotated[list[str], typer.Argument(help="Daemon publish endpoint(s), e.g. tcp://10.0.0.5:5555.")],
    save: Annotated[
        Path | None,
        typer.Option(
            "--save",
            help="Folder for defect evidence: per defect or review frame <camera>-<capture time>-<seq>.png (an overlay: the anomaly "
            "map when the wire carries it, else the mask, coloured on the view's threshold-anchored scale, with region boxes and "
            "peak scores, on the model-input grid; the wire carries no camera image) and the same name .json (the header). "
            "Existing files are never replaced.",
        ),
    ] = None,
    frames: Annotated[int | None, typer.Option("--frames", min=1, help="Stop after this many frames.")] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0.1, help="Give up after this many seconds without any message; exit 1.")
    ] = None,
    camera: Annotated[list[str] | None, typer.Option("--camera", help="Only these cameras (repeat); default all.")] = None,
    no_health: Annotated[bool, typer.Option("--no-health", help="Do not print or watch heartbeats.")] = False,
    client_key: Annotated[
        Path | None, typer.Option("--client-key", help="CURVE: this client's NAME.key_secret (from `ssae edge keys`).")
    ] = None,
    server_key: Annotated[Path | None, typer.Option("--server-key", help="CURVE: the daemon's public NAME.key.")] = None,
) -> None:
    """Print one line per frame (camera, seq, verdict, score, threshold, capture->receive latency, regions).

    Warns on stderr about frames lost between daemon and tap (sequence gaps not reported as drops) and about
    missing heartbeats (3 periods of silence). Ctrl-C stops and prints a summary.
    """
    from edge.client.tap import format_summary, run_tap
    from edge.security import curve_client_from_files

    with known_errors():
        configure = curve_client_from_files(client_key, server_key)
        try:
            summary = run_tap(endpoints, save_dir=save, frames=frames, timeout_s=timeout, cameras=camera or None,
                              health=not no_health, configure=configure, emit=_out, warn=_err)
        except ValueError as e:  # a malformed endpoint
            raise fail(str(e)) from None
    _err(format_summary(summary))
    if summary.stopped == "timeout":
        raise fail(f"no message for {timeout:g} s from {', '.join(endpoints)}; is the daemon running and publishing there?", code=1)


def recipe(
    control: Annotated[str, typer.Argument(help="The daemon's control endpoint ([control].endpoint), e.g. tcp://127.0.0.1:5556.")],
    name: Annotated[str, typer.Argument(help="A recipe of the daemon's config ([[recipes]] name).")],
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for the switch (the new bundle is loaded and test-run first).")] = 60.0,
    client_key: Annotated[Path | None, typer.Option("--client-key", help="CURVE: this client's NAME.key_secret.")] = None,
    server_key: Annotated[Path | None, typer.Option("--server-key", help="CURVE: the daemon's public NAME.key.")] = None,
) -> None:
    """Switch the daemon to another recipe (product) between two frames; a bundle that fails its checks is refused and the running one stays."""
    import zmq

    from edge.client.control import send_request
    from edge.security import curve_client_from_files
    from edge.wire import SelectRecipe

    with known_errors():
        configure = curve_client_from_files(client_key, server_key)
        try:
            reply = send_request(control, SelectRecipe(name=name), timeout_s=timeout, configure=configure)
        except TimeoutError as e:
            raise fail(str(e), code=1) from None
        except zmq.ZMQError as e:  # a malformed endpoint
            raise fail(f"cannot use the control endpoint {control!r} ({e}); write it like tcp://127.0.0.1:5556") from None
    if not reply.ok:
        raise fail(f"{control}: {reply.message}")
    _out(f"{control}: {reply.message} (recipe {reply.recipe}, model {reply.model_id[:12]})")


def register(app: typer.Typer) -> None:
    from edge.client.view.cli import view  # the command only: the web stack is imported when it runs

    app.command("tap")(tap)
    app.command("view")(view)
    app.command("recipe")(recipe)
