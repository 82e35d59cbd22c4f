"""Gather image scores of known-good production from a running daemon's stream.

The daemon's frame headers carry each frame's score as computed on the line (same camera, crop, backend),
so a live calibration needs no images: it subscribes with edge.client.subscriber, keeps the finite scores of
the bundle's model and fits them by the good-only rule. Frames the daemon could not judge (score NaN:
wrong size, backend error) are counted and left out; a stream from another model is refused at once.

"Known-good production" is checked, not assumed: under the threshold in force a good part is judged defect
at most as often as that threshold's calibration allows, so a larger share of frames judged defect means
defects in the stream, which the new threshold would let pass. See `defect_share_check`.
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
from edge.manifest import Calibration, Manifest


class LiveScores(msgspec.Struct, frozen=True, kw_only=True):
    scores: np.ndarray  # float64 (N,), in arrival order
    per_camera: dict[str, int]  # scores kept per camera
    seq_ranges: dict[str, tuple[int, int]]  # first and last seq seen per camera
    unjudged: int  # frames with no score (NaN), left out
    judged_defect: int  # frames the daemon called "defect" under its threshold at the time
    judged: int = 0  # scored frames that carried a threshold (the daemon judged them ok, review or defect)
    thresholds: list[float] = []  # the distinct image thresholds in force while gathering
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
    problem, note = defect_share_check(live, manifest, options)
    warnings = ([note] if note else []) + warnings_of(live)
    result = decide(live.scores, None, pixel, options, source=describe(endpoint, live), warnings=warnings, problems=[problem] if problem else [])
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
    unjudged = judged_defect = judged = 0
    thresholds: set[float] = set()
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
                    if math.isfinite(h.threshold):  # NaN: an uncalibrated daemon, every verdict "unknown"
                        judged += 1
                        thresholds.add(h.threshold)
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
        judged=judged,
        thresholds=sorted(thresholds),
        lost=tally.lost,
        dropped=tally.dropped,
        bad_messages=tally.bad_messages,
        seconds=time.monotonic() - start,
    )


def describe(endpoint: str, live: LiveScores) -> str:
    """The calibration's `source`: where and what was gathered."""
    cams = ", ".join(f"{c} {n} (seq {live.seq_ranges[c][0]}..{live.seq_ranges[c][1]})" for c, n in sorted(live.per_camera.items()))
    return f"live {endpoint}: {live.scores.size} frames in {live.seconds:.0f} s; {cams}"


def defect_share_check(live: LiveScores, manifest: Manifest, options: FitOptions) -> tuple[str | None, str | None]:
    """(reason to refuse, warning): is the share of frames judged defect plausible for known-good production?

    Under a threshold whose false-reject rate is at most L, the d frames judged defect among n good ones
    follow at most Binomial(n, L). The stream is refused when even the one-sided Clopper-Pearson lower bound
    of d/n at --confidence lies above L: good production trips it with probability at most 1 - confidence,
    and one frame judged defect never does when n backs the target (1 - c^(1/n) < 1 - (1 - c)^(1/n) <= L),
    while a share of defects well above L always does. L is the larger of the target false-reject
    rate and what the calibration in force can back (`claimed_false_reject`): an old threshold on few
    samples may reject more good parts than the target, and that alone is no sign of defects.
    """
    if live.judged == 0:
        return None, "no frame carried a threshold (the daemon is uncalibrated): the stream could not be checked for defects; make sure only good parts ran"
    d, n, c = live.judged_defect, live.judged, options.confidence
    claims = [claimed_false_reject(_calibration_with(manifest, t), c) for t in live.thresholds]
    known = [x for x in claims if x is not None]
    limit = max([options.target_false_reject, *known])
    if limit > options.target_false_reject:
        why = f"what the calibration in force can back at {c:.0%} confidence"
    else:
        why = "the target false-reject rate" + ("" if len(known) == len(claims) else ", as the threshold in force is none of the bundle's calibrations: pinned in the daemon config?")
    lower = rules.clopper_pearson_lower(d, n, c)
    in_force = ", ".join(f"{t:.4g}" for t in live.thresholds)
    if lower > limit:
        return (
            f"{d} of {n} frames ({d / n:.1%}) were judged defect under the threshold in force ({in_force}), more than known-good production "
            f"gives: at most {_pct(limit)} ({why}), and the share's {c:.0%} lower bound {_pct(lower)} (Clopper-Pearson) is above that limit; "
            "the stream holds defects, which the new threshold would let pass: gather again while only good parts run, "
            "checking the parts judged defect (`ssae edge tap` shows them); if they are good, the threshold in force is out of date"
        ), None
    if d:
        return None, f"{d} of {n} frames ({d / n:.1%}) were judged defect under the threshold in force ({in_force}), within what good production gives (limit {_pct(limit)}, {why}); check those parts"
    return None, None


def claimed_false_reject(cal: Calibration | None, confidence: float) -> float | None:
    """The largest false-reject rate a calibration vouches for: its recorded upper bound, else the bound of a
    threshold at or above all of its n good samples (1 - (1 - c)^(1/n)), else its target; None when unknown."""
    if cal is None:
        return None
    if cal.false_reject is not None and cal.false_reject.trials > 0:
        return cal.false_reject.upper
    if cal.n_good > 0:
        return rules.lowest_supported_target(cal.n_good, confidence)
    return cal.target_false_reject


def _calibration_with(manifest: Manifest, threshold: float) -> Calibration | None:
    """The bundle's calibration (current first, then the newest in history) whose image threshold is in force."""
    for cal in [manifest.calibration, *reversed(manifest.history)]:
        if cal is not None and cal.image_threshold == threshold:
            return cal
    return None


def warnings_of(live: LiveScores) -> list[str]:
    out = []
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


def _pct(rate: float) -> str:
    return f"{rate * 100:.3g}%"
