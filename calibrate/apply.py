"""Make a running daemon judge with a bundle's new calibration, without a restart or a lost frame.

Over the daemon's control endpoint (edge/client/control.py, REQ/REP): first Status, to make sure the daemon runs the
bundle's model (thresholds of one model mean nothing for another); then either

- Reload (default): the daemon re-reads its own bundle from disk and swaps in the new calibration between
  two batches, keeping its inference backend. It persists across restarts, but only takes effect if the
  daemon's bundle folder is the one calibrated and its config does not pin `image_threshold`;
  the reply's thresholds are checked against the bundle, and a mismatch says which of the two it is.
- ApplyThresholds (`thresholds_only`): sends the numbers themselves; works whatever folder the daemon
  loaded, but a restart or reload goes back to what is on the daemon's disk.
"""

from __future__ import annotations

import math
from pathlib import Path

import zmq

from edge.errors import UserError
from edge.manifest import Calibration, read_manifest
from edge.security import ClientHook
from edge.wire import ApplyThresholds, Reload, Reply, Request, Status


def apply_calibration(bundle_dir: Path, control: str, *, thresholds_only: bool = False, timeout_s: float = 5.0, configure: ClientHook | None = None) -> tuple[Reply, Calibration]:
    """Bring the daemon at `control` onto the bundle's current calibration; returns its reply and the calibration."""
    manifest = read_manifest(bundle_dir)
    cal = manifest.calibration
    if cal is None:
        raise UserError(f"{bundle_dir} has no calibration to apply; run `ssae calibrate fit` first")
    status = _ask(control, Status(), timeout_s, configure)
    if status.model_id != manifest.model_id:
        raise UserError(
            f"the daemon at {control} runs model {status.model_id[:12]}…, {bundle_dir} is model {manifest.model_id[:12]}…; "
            "its thresholds would mean nothing there: deploy the bundle (Reload with its path) or calibrate the daemon's bundle"
        )
    request = ApplyThresholds(image_threshold=cal.image_threshold, pixel_threshold=cal.pixel_threshold, review_threshold=cal.review_threshold) if thresholds_only else Reload()
    reply = _ask(control, request, timeout_s, configure)
    if not reply.ok:
        raise UserError(f"the daemon at {control} refused: {reply.message}")
    if not (_same(reply.image_threshold, cal.image_threshold) and _same(reply.pixel_threshold, cal.pixel_threshold)):
        raise UserError(
            f"the daemon reloaded but judges with image {reply.image_threshold:.6g} / pixel {reply.pixel_threshold:.6g}, not "
            f"{cal.image_threshold:.6g} / {cal.pixel_threshold:.6g} from {bundle_dir}: its config pins image_threshold/pixel_threshold, "
            "or it loads another copy of the bundle; remove the pin, copy this manifest.json there, or use --thresholds-only"
        )
    return reply, cal


def _ask(control: str, request: Request, timeout_s: float, configure: ClientHook | None) -> Reply:
    from edge.client.control import send_request

    try:
        return send_request(control, request, timeout_s=timeout_s, configure=configure)
    except TimeoutError as e:
        raise UserError(f"{e} (waited for the {type(request).__name__} reply; with CURVE on, pass --client-key and --server-key)") from None
    except zmq.ZMQError as e:
        raise UserError(f"cannot reach the control endpoint {control}: {e}; use tcp://host:port as in the daemon's [control]") from None


def _same(a: float, b: float) -> bool:
    return math.isfinite(a) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
