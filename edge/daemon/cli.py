"""`ssae edge run`: the daemon, from a config file or (quick mode) from a bundle and sources on the command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from edge.errors import UserError, known_errors, setup_logging

DEFAULT_PUBLISH = "tcp://127.0.0.1:5555"


def run(
    config: Annotated[Path | None, typer.Argument(help="Daemon config (TOML), e.g. configs/edge/demo.toml. Omit for quick mode.")] = None,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Quick mode: bundle folder (model.onnx + manifest.json).")] = None,
    source: Annotated[
        list[str] | None,
        typer.Option("--source", help="Quick mode: a camera source (device index, video file, rtsp:// URL or image folder); repeat for more cameras, named cam0, cam1, ..."),
    ] = None,
    publish: Annotated[list[str] | None, typer.Option("--publish", help=f"Endpoint to bind the stream on, repeatable (quick mode default: {DEFAULT_PUBLISH}); with CONFIG it replaces publish.endpoints.")] = None,
    policy: Annotated[
        str | None,
        typer.Option("--policy", help="Quick mode: queue policy of every camera: all (every frame counts; the default for files and folders) or latest (the freshest frame wins; the default for live cameras)."),
    ] = None,
    loop: Annotated[bool, typer.Option("--loop", help="Quick mode: replay files and folders forever.")] = False,
    wait_for_subscriber: Annotated[float | None, typer.Option("--wait-for-subscriber", min=0, help="Hold capture up to SECONDS until a subscriber has joined (so it misses nothing).")] = None,
    threshold: Annotated[float | None, typer.Option("--threshold", min=0, help="Quick mode: image threshold, overriding the bundle's calibration.")] = None,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", min=0, max=65535, help="Serve Prometheus metrics on 127.0.0.1:PORT (0: any free port).")] = None,
    control: Annotated[str | None, typer.Option("--control", help="Quick mode: control endpoint (reload/apply/status), e.g. tcp://127.0.0.1:5556.")] = None,
    max_batch: Annotated[int | None, typer.Option("--max-batch", min=1, max=256, help="Quick mode: frames per inference call.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=0, help="Quick mode: inference threads (0 = all cores).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Quick mode: daemon name, heartbeats go to health.NAME.")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the inspection daemon: cameras -> model -> verdicts on ZeroMQ, until SIGTERM or, with finite sources, their end.

    SIGHUP reloads the bundle and thresholds without dropping the stream.
    """
    with known_errors():
        setup_logging(log_level)
        from edge.daemon.daemon import serve

        if config is not None:
            cfg = _file_config(config, bundle, source, publish, wait_for_subscriber, metrics_port, threshold, control, max_batch, threads, name, loop, policy)
            code = serve(cfg, config_path=config)
        else:
            cfg = _quick_config(bundle, source, publish, policy, loop, wait_for_subscriber, threshold, metrics_port, control, max_batch, threads, name)
            code = serve(cfg, report=lambda cameras: _summary(cfg, cameras))
    if code:
        raise typer.Exit(code=code)


def _file_config(config, bundle, source, publish, wait_for_subscriber, metrics_port, threshold, control, max_batch, threads, name, loop, policy):
    """A config file, with the few run-time overrides that do not fight SIGHUP's re-read of the file."""
    import msgspec

    from edge.daemon.config import config_from_dict, load_config

    quick_only = {"--bundle": bundle, "--source": source, "--threshold": threshold, "--control": control, "--max-batch": max_batch, "--threads": threads, "--name": name}
    given = [flag for flag, value in quick_only.items() if value] + (["--loop"] if loop else []) + (["--policy"] if policy is not None else [])
    if given:
        raise UserError(f"{', '.join(given)} belong to quick mode; with {config} set them in the file instead")
    cfg = load_config(config)
    if publish is None and wait_for_subscriber is None and metrics_port is None:
        return cfg
    raw = msgspec.to_builtins(cfg)
    if publish:
        raw["publish"]["endpoints"] = publish
    if wait_for_subscriber is not None:
        raw["publish"]["wait_for_subscriber_s"] = wait_for_subscriber
    if metrics_port is not None:
        raw["metrics"]["port"] = metrics_port
    return config_from_dict(raw, origin=f"{config} with command-line options")


def _quick_config(bundle, source, publish, policy, loop, wait_for_subscriber, threshold, metrics_port, control, max_batch, threads, name):
    from edge.daemon.config import config_from_dict

    if bundle is None or not source:
        raise UserError("give a config file (ssae edge run configs/edge/demo.toml) or quick mode: --bundle B --source S [--source S2 ...]")
    if policy not in (None, "latest", "all"):
        raise UserError(f"--policy {policy!r} is unknown; use latest or all")
    for s in source:
        is_path = not (s.isdigit() or s.startswith("/dev/video") or "://" in s)
        if is_path and not Path(s).expanduser().exists():
            raise UserError(f"--source {s}: no such file or folder; pass a video file, an image folder, a device index or a URL")
    raw: dict = {
        "bundle": str(bundle),
        "cameras": [{"id": f"cam{i}", "source": s, "loop": loop, **({"queue": policy} if policy else {})} for i, s in enumerate(source)],
        "publish": {"endpoints": publish or [DEFAULT_PUBLISH], "wait_for_subscriber_s": wait_for_subscriber or 0.0},
        "metrics": {"port": metrics_port} if metrics_port is not None else {},
    }
    for key, value in (("image_threshold", threshold), ("max_batch", max_batch), ("threads", threads), ("name", name)):
        if value is not None:
            raw[key] = value
    if control:
        raw["control"] = {"endpoint": control}
    return config_from_dict(raw, origin="command line")


def _summary(cfg, cameras) -> None:
    """Quick mode's end, on stderr whatever the log level: what each camera judged, and every frame it did not."""
    from edge.daemon.capture import redact

    by_id = {c.id: c for c in cfg.cameras}
    for cam in cameras:
        camera = by_id[cam.camera]
        line = f"{cam.camera} ({redact(camera.source)}): {cam.frames_captured} frames captured, {cam.frames_judged} judged, {cam.frames_dropped} dropped"
        if cam.skipped_files:
            line += f", {cam.skipped_files} unreadable file(s) skipped"
        print(line, file=sys.stderr)
        if cam.frames_dropped:
            print(
                f"warning: {cam.camera} skipped {cam.frames_dropped} of {cam.frames_captured} frames: queue policy {camera.policy!r} keeps only "
                f"the freshest frame when inference is behind; pass --policy all to judge every frame",
                file=sys.stderr,
            )
        if cam.state == "failed":
            print(f"warning: {cam.camera} failed: {cam.last_error}", file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
