"""The ways `ssae edge bench` runs the daemon: quick mode as shipped, a tuned config, an example config's settings.

Each builds the arguments of `python -m edge ...` (or the config it reads) for one run on the bench video that
publishes on a given endpoint, where the bench's subscriber process listens.
"""

from __future__ import annotations

import socket
from pathlib import Path

import msgspec

from edge.errors import UserError
from edge.tools.toml_text import to_toml


class Setup(msgspec.Struct, frozen=True, kw_only=True):
    """One way of running the daemon that every round times."""

    name: str  # "shipped", "tuned", or an example config's file name
    how: str  # the command line or the settings, for the report
    config: str = ""  # an example config's path; "" for shipped and tuned


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def endpoint_now() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def shipped_args(bundle_dir: Path, video: Path, endpoint: str) -> list[str]:
    """Quick mode as the README shows it. --policy all: what files default to (finite sources judge every frame);
    --wait-for-subscriber: so the subscriber, which joins after the daemon binds, misses no frame."""
    return ["run", "--bundle", str(bundle_dir.resolve()), "--source", str(video.resolve()), "--publish", endpoint, "--policy", "all",
            "--wait-for-subscriber", "60"]


def tuned_config(bundle_dir: Path, video: Path, endpoint: str, *, threads: int, spin: bool, batch: int, queue: str = "all", pace_fps: float = 0.0,
                 queue_size: int | None = None) -> dict:
    """The daemon at raw's best setting: its batch, its spin, its threads."""
    return {
        "name": "bench", "bundle": str(bundle_dir.resolve()), "threads": threads, "spin": spin, "max_batch": batch,
        "publish": {"endpoints": [endpoint], "wait_for_subscriber_s": 60, "heartbeat_s": 0.5},
        "cameras": [{"id": "cam0", "source": str(video.resolve()), "queue": queue, "pace_fps": pace_fps,
                     "queue_size": queue_size or max(4, 2 * batch)}],
    }


def example_config(example: Path, bundle_dir: Path, video: Path, endpoint: str) -> dict:
    """An example config's daemon settings on the bench video: its top-level keys, [publish] (but the endpoint),
    [postprocess]; one camera reading the video with queue "all" and the example's first "all" queue_size.
    Metrics, control, archive and CURVE are left out: the bench's subscriber has no keys, and nothing is written."""
    from edge.daemon.config import load_config

    cfg = load_config(example)
    if cfg.backend != "onnxruntime":
        raise UserError(f"--example {example}: backend = {cfg.backend!r}; the bench times ONNX Runtime, give a CPU config")
    raw = msgspec.to_builtins(cfg)
    all_queues = [c.queue_size for c in cfg.cameras if c.queue == "all"]
    raw.update(bundle=str(bundle_dir.resolve()), name="bench",
               cameras=[{"id": "cam0", "source": str(video.resolve()), "queue": "all", **({"queue_size": all_queues[0]} if all_queues else {})}])
    raw["publish"].update(endpoints=[endpoint], wait_for_subscriber_s=60)
    for key in ("metrics", "control", "archive", "security", "gpu", "image_threshold", "pixel_threshold"):
        raw.pop(key, None)
    return raw


def example_how(example: Path) -> str:
    from edge.daemon.config import load_config

    c = load_config(example)
    return (f"`{example}`'s settings: threads {c.threads}, spin {str(c.spin).lower()}, max_batch {c.max_batch}, batch_wait_ms {c.batch_wait_ms}, "
            f"mask {c.publish.mask}, queue all")


def write_toml(path: Path, raw: dict) -> Path:
    """A daemon config file from its mapping (None values leave the default)."""
    path.write_text(to_toml(raw))
    return path