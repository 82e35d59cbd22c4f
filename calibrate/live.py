"""Gather image scores of known-good production from a running daemon's stream.

The daemon's frame headers carry each frame's score as computed on the line (same camera, crop, backend),
so a live calibration needs no images: it subscribes with edge.client.subscriber, keeps the finite scores of
the bundle's model and fits them by the good-only rule. Frames the daemon could not judge (score NaN:
wrong size, backend error) are counted and left out; a stream from another model is refused at once.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import numpy as np
from tqdm import tqdm

from calibrate import rules
from calibrate.fit import CalibrationRefused, FitOptions, FitResult, PixelChoice, decide, too_few_goods
from edge.client.subscriber import BadMessage, FrameEvent, HealthEvent, HeartbeatLost, SocketHook, Subscriber
from edge.errors import UserError


class LiveScores(msgspec.Struct, frozen=True, kw_only=True):
    scores: np.ndarray  # float64 (N,), in arrival order
    per_camera: dict[str, int]  # scores kept per camera
    seq_ranges: dict[str, tuple[int, int]]  # first and last seq seen per camera
    unjudged: int  # frames with no score (NaN), left out
    judged_defect: int  # frames the daemon called "defect" under its threshold at the time
    lost: int  # frames published but not received (network, our queue)
    dropped: int  # frames the daemon dropped itself
    bad_messages: int
    seconds: float


def fit_live(
    bundle_dir: Path,
    endpoint: str,
    *,
    frames: int,
    options: FitOptions,
    cameras: Sequence[str] | None = None,
    idle_timeout_s: float = 10.0,
    timeout_s: float | None = None,
    configure: SocketHook | None = None,
) -> tuple[FitResult, str]:
    """Gather `frames` scores of the bundle's model from the stream and decide; returns the result and the model id."""
    from edge.bundle import load_bundle

    manifest = load_bundle(bundle_dir).manifest
    if options.rule != "frr":
        raise UserError("a live calibration has good samples only: the rule is frr")
    if not options.force and frames < rules.min_good_samples(options.target_false_reject, options.confidence):
        raise CalibrationRefused(f"calibration refused before gathering: {too_few_goods(frames, options)}; or ask for more --frames")
    live = gather_scores(endpoint, frames=frames, model_id=manifest.model_id, cameras=cameras, idle_timeout_s=idle_timeout_s,
                         timeout_s=timeout_s, configure=configure, progress=options.progress)
    # The wire carries masks, not maps: keep the pixel threshold calibrated before (decide caps it at the new image threshold).
    old = manifest.calibration
    pixel = None if old is None else PixelChoice(
        threshold=old.pixel_threshold, method="kept", detail=f"kept from the previous calibration ({old.method}): the stream carries no maps"
    )
    result = decide(live.scores, None, pixel, options, source=describe(endpoint, live), warnings=warnings_of(live))
    return result, manifest.model_id


def gather_scores(
    endpoint: str,
    *,
    frames: int,
    model_id: str,
    cameras: Sequence[str] | None = None,
    idle_timeout_s: float = 10.0,
    timeout_s: float | None = None,
    configure: SocketHook | None = None,
    progress: bool = True,
) -> LiveScores:
    """Receive until `frames` scores are in; UserError on another model, a silent daemon or a stalled stream."""
    scores: list[float] = []
    per_camera: dict[str, int] = {}
    seq_ranges: dict[str, tuple[int, int]] = {}
    unjudged = judged_defect = 0
    start = last_frame = time.monotonic()
    try:
        sub = Subscriber(endpoint, cameras=cameras, masks=False, first_heartbeat_s=idle_timeout_s, configure=configure)
    except ValueError as e:
        raise UserError(str(e)) from None
    with sub, tqdm(total=frames, desc="gathering scores", unit="frame", file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
        while len(scores) < frames:
            now = time.monotonic()
            if timeout_s is not None and now - start > timeout_s:
                raise UserError(f"only {len(scores)} of {frames} scores from {endpoint} within --timeout {timeout_s:g} s; ask for fewer --frames or wait longer")
            if now - last_frame > idle_timeout_s:
                raise UserError(
                    f"no scored frame from {endpoint} for {idle_timeout_s:g} s ({len(scores)} of {frames} gathered); "
                    "is the line running and the daemon publishing there" + (f" for camera(s) {', '.join(cameras)}" if cameras else "") + "?"
                )
            match sub.receive(timeout_s=0.5):
                case FrameEvent(header=h):
                    _check_model(h.model_id, model_id, endpoint)
                    last_frame = time.monotonic()
                    first, _ = seq_ranges.get(h.camera, (h.seq, h.seq))
                    seq_ranges[h.camera] = (first, h.seq)
                    if not math.isfinite(h.score):
                        unjudged += 1
                        continue
                    scores.append(h.score)
                    per_camera[h.camera] = per_camera.get(h.camera, 0) + 1
                    judged_defect += h.verdict == "defect"
                    bar.update(1)
                case HealthEvent(health=health):
                    _check_model(health.model_id, model_id, endpoint)
                case HeartbeatLost(daemon=daemon, silent_s=silent):
                    who = f"daemon {daemon}" if daemon else f"any daemon at {endpoint}"
                    raise UserError(f"no heartbeat from {who} for {silent:.1f} s; is it running and publishing there?")
                case BadMessage(topic=topic, error=error):
                    print(f"warning: undecodable message on {topic}: {error}", file=sys.stderr)
        tally = sub.tally()
    return LiveScores(
        scores=np.asarray(scores, np.float64),
        per_camera=per_camera,
        seq_ranges=seq_ranges,
        unjudged=unjudged,
        judged_defect=judged_defect,
        lost=tally.lost,
        dropped=tally.dropped,
        bad_messages=tally.bad_messages,
        seconds=time.monotonic() - start,
    )


def describe(endpoint: str, live: LiveScores) -> str:
    """The calibration's `source`: where and what was gathered."""
    cams = ", ".join(f"{c} {n} (seq {live.seq_ranges[c][0]}..{live.seq_ranges[c][1]})" for c, n in sorted(live.per_camera.items()))
    return f"live {endpoint}: {live.scores.size} frames in {live.seconds:.0f} s; {cams}"


def warnings_of(live: LiveScores) -> list[str]:
    out = []
    if live.judged_defect:
        out.append(
            f"{live.judged_defect} of {live.scores.size} frames were judged defect under the threshold then in force; "
            "a live calibration assumes known-good production: check those parts"
        )
    repeats = live.scores.size - np.unique(live.scores).size
    if repeats * 20 > live.scores.size:  # > 5 %: bit-identical scores come from the same image, not new parts
        out.append(
            f"{repeats} of {live.scores.size} scores repeat exactly (a looping file or a part seen in many frames?); "
            "the rule assumes one score per independent part: gather from triggered inspection or at the part rate"
        )
    if live.unjudged:
        out.append(f"{live.unjudged} frames had no score (judged unknown by the daemon) and were left out")
    if live.lost or live.dropped:
        out.append(f"{live.lost} frames lost on the way and {live.dropped} dropped by the daemon (not a problem for the scores gathered)")
    return out


def _check_model(stream_model: str, bundle_model: str, endpoint: str) -> None:
    if stream_model != bundle_model:
        raise UserError(
            f"the stream at {endpoint} comes from model {stream_model[:12]}…, the bundle is model {bundle_model[:12]}…; "
            "scores of one model say nothing about another: calibrate the bundle the daemon runs"
        )
