"""`ssae edge tap`: watch a daemon's stream from a shell, one line per frame, loss called out loudly.

Lines go to `emit` (stdout in the CLI), warnings (sequence gaps, missed heartbeats, undecodable messages)
to `warn` (stderr). With a save folder, every `defect` and `review` frame leaves two files there, written
atomically:

    <camera>-<capture time, UTC>-<seq>.png   the overlay: the anomaly map when the wire carries it (publish.mask_kind
                                             "map" or "both"), else the mask, coloured on the view's scale anchored to
                                             the threshold (edge/overlay.py), each region's box and peak
                                             score, on the model-input grid scaled up for reading; the wire carries no
                                             camera image, so this is not a photo
    <camera>-<capture time, UTC>-<seq>.json  the frame header as received

e.g. cam1-20250101T120000.123456789Z-0000000041.png. The capture time keeps names apart across daemon
restarts (seq starts again at 0), and a name that exists anyway is never replaced: the pair gets a
"-2", "-3", ... suffix instead.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec
import numpy as np

from edge.client.subscriber import BadMessage, FrameEvent, HealthEvent, HeartbeatLost, SocketHook, Subscriber, Tally, evidence
from edge.files import write_new_bytes
from edge.wire import FrameHeader, Health, header_json

Emit = Callable[[str], None]
SAVED_VERDICTS = ("defect", "review")  # rejects, and the frames of an uncertain band someone should look at


class TapSummary(msgspec.Struct, frozen=True, kw_only=True):
    stopped: str  # "frames" (--frames reached), "timeout" (silence), "interrupted" (Ctrl-C), "stop" (caller)
    tally: Tally
    verdicts: dict[str, int]
    saved: int
    elapsed_s: float  # first to last frame received
    latency_p50_ms: float | None
    latency_p99_ms: float | None

    @property
    def fps(self) -> float:
        n = self.tally.frames
        return (n - 1) / self.elapsed_s if n > 1 and self.elapsed_s > 0 else 0.0


def format_frame(event: FrameEvent) -> str:
    h = event.header
    line = (f"{h.camera} seq={h.seq} {h.verdict:<7} score={h.score:.5g} thr={h.threshold:.5g} "
            f"latency={event.latency_ms:.1f}ms regions={len(h.regions)}")
    if h.dropped:
        line += f" dropped={h.dropped}"
    if h.reason:
        line += f" reason={h.reason!r}"
    return line


def format_health(h: Health) -> str:
    cams = ", ".join(
        f"{c.camera} {c.state} {c.fps:.1f}fps judged={c.frames_judged} dropped={c.frames_dropped}"
        + (f" reconnects={c.reconnects}" if c.reconnects else "")
        + (f" skipped={c.skipped_files}" if c.skipped_files else "")
        + (f" error={c.last_error!r}" if c.last_error and c.state != "streaming" else "")
        for c in h.cameras
    )
    extra = f" publish_dropped={h.publish_dropped}" if h.publish_dropped else ""
    return f"health {h.daemon} #{h.seq} up={h.uptime_s:.0f}s {h.backend} thr={h.image_threshold:.5g}{extra} | {cams or 'no cameras'}"


def render_defect(header: FrameHeader, mask: np.ndarray | None, amap: np.ndarray | None = None) -> np.ndarray:
    """BGR image: the map (else the mask) and the regions on the model grid, as the view draws them, with a caption."""
    import cv2

    from edge.overlay import render_overlay

    img = render_overlay(header, mask=mask, amap=amap)
    caption = f"{header.camera} #{header.seq} {header.verdict} score {header.score:.4g} thr {header.threshold:.4g}"
    cv2.putText(img, caption, (3, img.shape[0] - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def save_defect(folder: Path, event: FrameEvent) -> Path:
    import cv2

    h = event.header
    mask, amap = evidence(event)
    ok, png = cv2.imencode(".png", render_defect(h, mask, amap))
    if not ok:
        raise RuntimeError("cv2.imencode failed for a defect overlay")
    body = header_json(h)
    seconds, ns = divmod(h.capture_ns, 1_000_000_000)
    base = f"{h.camera}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(seconds))}.{ns:09d}Z-{h.seq:010d}"
    for n in itertools.count(1):
        stem = base if n == 1 else f"{base}-{n}"
        json_path, png_path = folder / f"{stem}.json", folder / f"{stem}.png"
        if json_path.exists() or png_path.exists():
            continue
        try:  # never over an existing file, even one that appeared since the check (another tap, same folder)
            write_new_bytes(json_path, body)
        except FileExistsError:
            continue
        try:
            write_new_bytes(png_path, png.tobytes())
        except FileExistsError:
            json_path.unlink()  # ours, written a moment ago
            continue
        return png_path
    raise AssertionError("itertools.count never ends")


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, np.float64), q)) if len(values) else None


def run_tap(
    endpoints: str | Sequence[str],
    *,
    save_dir: Path | None = None,
    frames: int | None = None,
    timeout_s: float | None = None,
    cameras: Sequence[str] | None = None,
    health: bool = True,
    configure: SocketHook | None = None,
    emit: Emit = print,
    warn: Emit = print,
    should_stop: Callable[[], bool] = lambda: False,
) -> TapSummary:
    """Print the stream until `frames` frames arrived, nothing arrived for `timeout_s`, Ctrl-C, or should_stop()."""
    if save_dir is not None:
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
    verdicts = {"ok": 0, "defect": 0, "unknown": 0}
    latencies: list[float] = []
    saved, first_rx, last_rx = 0, None, None
    stopped = "stop"
    with Subscriber(endpoints, cameras=cameras, health=health, masks=save_dir is not None, configure=configure) as sub:
        last_any = time.monotonic()
        try:
            while not should_stop():
                if frames is not None and sum(verdicts.values()) >= frames:
                    stopped = "frames"
                    break
                event = sub.receive(timeout_s=0.25)
                now = time.monotonic()
                if event is None:
                    if timeout_s is not None and now - last_any >= timeout_s:
                        stopped = "timeout"
                        break
                    continue
                if not isinstance(event, HeartbeatLost):
                    last_any = now
                match event:
                    case FrameEvent(header=h):
                        if event.restarted:
                            warn(f"warning: {h.camera} seq went back to {h.seq}: the daemon restarted")
                        if event.lost:
                            warn(f"warning: {h.camera} lost {event.lost} frame(s) before seq {h.seq} "
                                 f"(published but not received: slow subscriber or network)")
                        emit(format_frame(event))
                        verdicts[h.verdict] = verdicts.get(h.verdict, 0) + 1
                        latencies.append(event.latency_ms)
                        first_rx = first_rx or event.received_ns
                        last_rx = event.received_ns
                        if save_dir is not None and h.verdict in SAVED_VERDICTS:
                            save_defect(save_dir, event)
                            saved += 1
                    case HealthEvent(health=h):
                        if event.missed:
                            warn(f"warning: {event.missed} heartbeat(s) of {h.daemon} missed before #{h.seq}")
                        if event.resumed:
                            warn(f"warning: heartbeats of {h.daemon} resumed")
                        emit(format_health(h))
                    case HeartbeatLost(daemon=d, silent_s=s, limit_s=limit):
                        who = d or "any daemon"
                        warn(f"warning: no heartbeat from {who} for {s:.1f} s (limit {limit:.1f} s): treat the inspector as down")
                    case BadMessage(topic=t, error=e):
                        warn(f"warning: bad message on {t!r}: {e}")
        except KeyboardInterrupt:
            stopped = "interrupted"
        tally = sub.tally()
    return TapSummary(
        stopped=stopped,
        tally=tally,
        verdicts=verdicts,
        saved=saved,
        elapsed_s=((last_rx - first_rx) / 1e9) if first_rx and last_rx else 0.0,
        latency_p50_ms=percentile(latencies, 50),
        latency_p99_ms=percentile(latencies, 99),
    )


def format_summary(s: TapSummary) -> str:
    t = s.tally
    lat = "" if s.latency_p50_ms is None else f", latency p50 {s.latency_p50_ms:.1f} ms p99 {s.latency_p99_ms:.1f} ms"
    lines = [
        f"{t.frames} frames ({', '.join(f'{k} {v}' for k, v in s.verdicts.items())}), {s.fps:.1f} fps{lat}",
        f"lost {t.lost} (seq gaps not reported as drops), dropped by the daemon {t.dropped}, "
        f"heartbeats {t.heartbeats} (missed {t.heartbeats_missed}, silences {t.heartbeat_losses}), bad messages {t.bad_messages}",
    ]
    if s.saved:
        lines.append(f"saved {s.saved} defect/review overlay(s)")
    return "\n".join(lines)
