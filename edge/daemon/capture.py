"""One capture per camera: open the source, read frames, stamp them at grab, hand them to a bounded queue.

Sources: a device index ("0") or /dev/videoN, a video file, an rtsp:// / http:// URL (or a GStreamer
pipeline), or a folder of images. Each connection is read by its own short-lived reader thread while the
capture's supervisor thread watches it: OpenCV's `read()` on a network stream can block forever, so a
live source that delivers nothing for `stale_after_s` is abandoned (its thread is left to die, its frames
ignored) and the source is reopened with exponential backoff. A file or folder that cannot be read
(missing, not a video OpenCV decodes, no readable image) does not heal by retrying: the camera is
"failed" at once, with the reason in its heartbeat and one log line.

Every captured frame gets the camera's next sequence number before it is queued, so a frame dropped
anywhere downstream still shows as a gap (the wire's `dropped`). Queue policies (unset, the policy
follows the source: `all` for files and folders, `latest` for live sources; see CameraConfig.policy):
    latest  a full queue drops its oldest frame (counted): free-running video, freshest frame wins
    all     capture waits for room: triggered lines where every part counts; never drops unless the
            daemon aborts its drain, and then the frame is counted as dropped
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from edge.daemon.config import CameraConfig
from edge.daemon.threads import Threaded
from edge.daemon.triggers import TriggerSlot
from edge.errors import UserError
from edge.files import IMAGE_SUFFIXES, list_images
from edge.ratelimit import RateLimitedLog
from edge.wire import CameraHealth, CameraState

log = logging.getLogger("edge.capture")

APIS = {"auto": cv2.CAP_ANY, "ffmpeg": cv2.CAP_FFMPEG, "gstreamer": cv2.CAP_GSTREAMER, "v4l2": cv2.CAP_V4L2}
POLL_S = 0.1  # how often blocked waits look at the stop flags


@dataclass(frozen=True, slots=True)
class Frame:
    camera: str
    seq: int  # per camera, +1 for every captured frame
    capture_ns: int  # time.time_ns() right after the grab
    image: np.ndarray  # as the source delivered it: uint8 (H, W[, C]) normally
    source: str  # file name, file#index, URL (credentials removed) or device
    part_id: str = ""  # from the trigger this frame answers (edge/daemon/triggers.py)
    trigger_id: int = 0  # 0: not triggered


class SourceError(Exception):
    """The source did not open or was lost; the capture retries with backoff."""


class EndOfSource(Exception):
    """A finite source (file, folder) has no more frames."""


def redact(source: str) -> str:
    """rtsp://user:secret@host/… -> rtsp://***@host/…: URLs end up in logs and headers."""
    return re.sub(r"//[^@/\s]*@", "//***@", source)


def check_props(cfg: CameraConfig) -> dict[int, float]:
    """OpenCV property ids for cfg.props, refusing names OpenCV does not know."""
    out = {}
    for name, value in cfg.props.items():
        prop = getattr(cv2, f"CAP_PROP_{name}", None)
        if prop is None:
            raise UserError(f"cameras[{cfg.id}].props.{name}: OpenCV has no CAP_PROP_{name}; check the name in OpenCV's VideoCaptureProperties")
        out[prop] = value
    return out


class VideoSource:
    """cv2.VideoCapture on a device, a file, a URL or a pipeline."""

    def __init__(self, cfg: CameraConfig, kind: str, props: dict[int, float]):
        self.label = redact(cfg.source)
        self.is_file = kind == "path"
        api = APIS[cfg.capture_api]
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(cfg.open_timeout_s * 1000), cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(cfg.read_timeout_s * 1000)]
        target: int | str = int(cfg.source) if cfg.source.isdigit() else cfg.source
        self.cap = cv2.VideoCapture(target, api, params)
        if not self.cap.isOpened():
            self.cap.release()
            what = "file is not a video OpenCV can decode" if self.is_file else "unreachable, unplugged, busy or no permission"
            raise SourceError(f"{self.label} did not open ({what})")
        for prop, value in props.items():
            if not self.cap.set(prop, value):
                log.warning("camera source %s: OpenCV did not accept property %s = %s", self.label, prop, value)
        self.index = 0

    def grab(self) -> tuple[np.ndarray, int, str]:
        if not self.cap.grab():
            if self.is_file:
                raise EndOfSource
            raise SourceError(f"{self.label}: read failed (stream ended or camera lost)")
        capture_ns = time.time_ns()
        ok, image = self.cap.retrieve()
        if not ok or image is None:
            raise SourceError(f"{self.label}: frame {self.index} could not be decoded")
        self.index += 1
        return image, capture_ns, f"{self.label}#{self.index - 1}" if self.is_file else self.label

    def close(self) -> None:
        self.cap.release()


class FolderSource:
    """The images of a folder in name order; unreadable files are reported through on_skip and passed over."""

    def __init__(self, folder: Path, on_skip: Callable[[Path, str], None]):
        self.files = list_images(folder)
        if not self.files:
            raise SourceError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        self.on_skip = on_skip
        self.index = 0

    def grab(self) -> tuple[np.ndarray, int, str]:
        while self.index < len(self.files):
            path = self.files[self.index]
            self.index += 1
            try:
                image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # as stored: the model judges channels and depth
            except cv2.error as e:
                image, why = None, str(e).strip().splitlines()[-1]
            else:
                why = "missing, not an image or corrupt"
            if image is None:
                self.on_skip(path, why)
                continue
            return image, time.time_ns(), path.name
        raise EndOfSource

    def close(self) -> None:
        pass


class CameraStats:
    """Counters one capture keeps for the heartbeat and the metrics; read as a snapshot."""

    def __init__(self, camera: str):
        self.camera = camera
        self.lock = threading.Lock()
        self.state: CameraState = "starting"
        self.captured = 0
        self.dropped = 0  # dropped by the queue policy (or at an aborted drain)
        self.reconnects = 0
        self.skipped = 0
        self.last_error = ""
        # Set by the inference worker while this camera's frames cannot be fitted to the model (crop outside
        # the frame, wrong size or channels): frames flow, but none is inspected, so the heartbeat says "failed".
        self.fault = ""
        self.times = collections.deque(maxlen=64)  # monotonic seconds of recent frames, for fps

    def set(self, **changes) -> None:
        with self.lock:
            for name, value in changes.items():
                setattr(self, name, value)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> CameraHealth:
        with self.lock:
            now = time.monotonic()
            recent = [t for t in self.times if now - t < 5.0]
            fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
            return CameraHealth(
                camera=self.camera, state="failed" if self.fault else self.state, fps=round(fps, 2), frames_captured=self.captured,
                frames_dropped=self.dropped, reconnects=self.reconnects, skipped_files=self.skipped, last_error=self.fault or self.last_error,
            )


class Capture(Threaded):
    """The capture of one camera: a supervisor thread, a reader thread per connection, a bounded queue."""

    def __init__(self, cfg: CameraConfig, notify: threading.Event, trigger: TriggerSlot | None = None):
        self.cfg = cfg
        self.trigger = trigger or TriggerSlot(cfg.id)  # a trigger names the next frame grabbed after it
        self.kind = cfg.kind
        self.live = self.kind != "path"
        self.props = check_props(cfg)
        self.queue: queue.Queue[Frame] = queue.Queue(maxsize=cfg.queue_size)
        self.stats = CameraStats(cfg.id)
        self.notify = notify  # shared with the inference worker: "a frame is waiting somewhere"
        self.abort_event = threading.Event()  # give up a blocked put too (drain timed out)
        self.lock = threading.Lock()
        self.seq = 0
        self.generation = 0  # bumped to disown an abandoned reader
        self.progress = time.monotonic()  # last sign of life of the current reader
        self.retries = RateLimitedLog(log)  # a camera that stays away is said once a minute, with a count
        # The supervisor thread; stop(): stop reading (a frame being queued is still delivered); `done` once
        # it has ended (finished, failed or stopped): no more frames will come.
        super().__init__(f"capture-{cfg.id}")

    def abort(self) -> None:
        """stop(), and give up a put blocked on a full `all` queue too (the drain timed out)."""
        self.stop_event.set()
        self.abort_event.set()

    # --- supervisor -----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._retry_loop()
        except Exception as e:  # a bug, not a camera problem: report it as this camera's failure
            log.exception("camera %s: capture failed", self.cfg.id)
            self.stats.set(state="failed", last_error=f"capture failed: {type(e).__name__}: {e}")
        with self.stats.lock:
            if self.stats.state != "failed":
                self.stats.state = "finished"  # ended or stopped: no more frames from this camera
        self.retries.flush()

    def _retry_loop(self) -> None:
        cfg = self.cfg
        failures, delay = 0, cfg.backoff_initial_s
        while not self.stop_event.is_set():
            outcome, error, delivered = self._connection()
            if outcome == "ended" and self.stats.captured == 0:
                outcome, error = "lost", self._nothing_readable()
            if outcome != "lost":
                if outcome == "ended":
                    self.stats.set(state="finished")
                    log.info("camera %s: %s finished after %d frames", cfg.id, redact(cfg.source), self.stats.captured)
                return
            if not self.live and not delivered:  # a file or folder that yields nothing now will not later
                self._fail(error, "check the path (a video file or a folder of images) and restart the daemon")
                return
            if delivered:
                failures, delay = 0, cfg.backoff_initial_s  # it worked for a while: start the backoff afresh
            failures += 1
            self.stats.set(last_error=error)
            if cfg.give_up_after and failures >= cfg.give_up_after:
                self._fail(error, f"after {failures} failed attempts (give_up_after); check the camera and restart the daemon")
                return
            self.stats.set(state="reconnecting")
            self.retries.log("retry", logging.WARNING, "camera %s: %s; retrying in %.1f s", cfg.id, error, delay)
            if self.stop_event.wait(delay):
                return
            self.stats.add("reconnects")
            delay = min(delay * 2, cfg.backoff_max_s)

    def _fail(self, error: str, fix: str) -> None:
        self.stats.set(state="failed", last_error=error)
        log.error("camera %s failed: %s; %s", self.cfg.id, error, fix)

    def _nothing_readable(self) -> str:
        source = redact(self.cfg.source)
        if self.stats.skipped:
            return f"{source}: no readable image ({self.stats.skipped} unreadable file(s) skipped)"
        return f"{source}: no frame OpenCV can decode (an empty or corrupt file)"

    def _connection(self) -> tuple[str, str, int]:
        """Run one reader until it ends: ("ended" | "lost" | "stopped", error, frames delivered)."""
        with self.lock:
            self.generation += 1
            generation = self.generation
        self.progress = time.monotonic()
        result: dict = {"outcome": "stopped", "error": "", "delivered": 0}
        reader = threading.Thread(name=f"reader-{self.cfg.id}", target=self._read, args=(generation, result), daemon=True)
        reader.start()
        limit_s = self.cfg.stale_after_s
        stop_seen = None
        while reader.is_alive():
            reader.join(POLL_S)
            idle_s = time.monotonic() - self.progress
            if self.stop_event.is_set():
                stop_seen = stop_seen or time.monotonic()
                # A local reader finishes its frame and leaves; a live one may hang in read(): disown it.
                if self.live and time.monotonic() - stop_seen > min(limit_s, 2.0) and idle_s > min(limit_s, 2.0):
                    self._disown()
                    return "stopped", "", result["delivered"]
            elif self.live and idle_s > (limit_s if result["delivered"] else limit_s + self.cfg.open_timeout_s):
                self._disown()
                return "lost", f"{redact(self.cfg.source)}: no frame for {idle_s:.1f} s (stale stream)", result["delivered"]
        return result["outcome"], result["error"], result["delivered"]

    def _disown(self) -> None:
        with self.lock:
            self.generation += 1

    # --- reader ---------------------------------------------------------------------------------------
    def _open(self):
        if self.kind == "path":
            path = Path(self.cfg.source).expanduser()
            if path.is_dir():
                return FolderSource(path, self._skipped)
            if not path.exists():
                raise SourceError(f"{path}: no such file or folder")
        return VideoSource(self.cfg, self.kind, self.props)

    def _read(self, generation: int, result: dict) -> None:
        try:
            source = self._open()
        except SourceError as e:
            result.update(outcome="lost", error=str(e))
            return
        except cv2.error as e:
            result.update(outcome="lost", error=f"{redact(self.cfg.source)}: OpenCV error while opening: {e}")
            return
        pace_s = 1.0 / self.cfg.pace_fps if self.cfg.pace_fps and not self.live else 0.0
        since_open, next_due = 0, time.monotonic()
        try:
            while not self.stop_event.is_set() and generation == self.generation:
                if pace_s:
                    if self.stop_event.wait(max(0.0, next_due - time.monotonic())):
                        break
                    next_due = max(next_due + pace_s, time.monotonic() - pace_s)
                try:
                    image, capture_ns, label = source.grab()
                except EndOfSource:
                    if not self.cfg.loop:
                        result.update(outcome="ended")
                        return
                    if since_open == 0:
                        result.update(outcome="lost", error=self._nothing_readable())
                        return
                    source.close()
                    source, since_open = self._open(), 0  # re-listing a folder picks up new images
                    continue
                self.progress = time.monotonic()
                if not self._emit(image, capture_ns, label, generation):
                    return
                since_open += 1
                result["delivered"] += 1
        except (SourceError, cv2.error) as e:
            result.update(outcome="lost", error=str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
        finally:
            source.close()

    def _skipped(self, path: Path, why: str) -> None:
        self.stats.add("skipped")
        self.stats.set(last_error=f"skipped {path.name}: {why}")
        log.warning("camera %s: skipped %s: %s", self.cfg.id, path, why)

    def _emit(self, image: np.ndarray, capture_ns: int, label: str, generation: int) -> bool:
        """Number the frame and queue it by the camera's policy; False when this reader must stop."""
        with self.lock:
            if generation != self.generation:
                return False  # disowned while blocked in read(): its frame belongs to no one
            seq, self.seq = self.seq, self.seq + 1
        tag = self.trigger.take(capture_ns)
        frame = Frame(camera=self.cfg.id, seq=seq, capture_ns=capture_ns, image=image, source=label,
                      part_id=tag.part_id if tag else "", trigger_id=tag.trigger_id if tag else 0)  # fmt: skip
        with self.stats.lock:
            self.stats.captured += 1
            self.stats.times.append(time.monotonic())
            if self.stats.state != "streaming":
                self.stats.state = "streaming"
        if self.cfg.policy == "latest":
            while True:
                try:
                    self.queue.put_nowait(frame)
                    break
                except queue.Full:
                    try:
                        old = self.queue.get_nowait()  # the oldest goes; its seq shows as a gap downstream
                        self.stats.add("dropped")
                    except queue.Empty:
                        continue
                    if old.trigger_id and not frame.trigger_id:
                        # A triggered frame is not lost to the freshest-wins policy: its trigger passes to
                        # this frame, grabbed later still, so still after the trigger.
                        frame = dataclasses.replace(frame, part_id=old.part_id, trigger_id=old.trigger_id)
        else:
            while True:
                try:
                    self.queue.put(frame, timeout=POLL_S)
                    break
                except queue.Full:
                    self.progress = time.monotonic()  # waiting for room is not a stale stream
                    if self.abort_event.is_set() or generation != self.generation:
                        self.stats.add("dropped")
                        return False
        self.notify.set()
        return True
