"""The inference worker: gathers frames across cameras into batches, runs the model, judges, hands over.

    captures' queues ──► gather (≤ max_batch, fair across cameras) ──► fit_frame (crop, resize, channels)
        ──► backend (edge/backends/inflight.py) ──► judge (verdict, mask, regions) ──► publisher (+ archive)

Every backend is pipelined: batch k+1 is submitted before batch k is collected, so a GPU uploads,
computes and downloads consecutive batches at once and ONNX Runtime's runner thread computes batch k+1
while this thread judges and publishes batch k. When the queues are empty the worker collects what is in
flight at once instead of waiting for more frames, so a lone frame is not held. Batches are collected in
submission order: frames keep their order, and each camera its seq order.

A frame that cannot be judged (wrong size or channels, a backend error, a post-processing error) is still
published, as verdict "unknown" with the reason: the line never loses a part silently. A frame that does
not fit the model (crop outside the frame, wrong size with resize off, wrong channels or depth) is a set-up
fault, not bad luck: its camera shows "failed" with the reason in the heartbeat until a frame fits again,
and the log says so once (then once a minute, with a count), as it does for backend errors. The model is read
once per batch through `current_model`, so a reload takes effect between two batches, never inside one;
when the reload brought another backend, the batches still in flight on the old one are collected and
published first, and only then is the old one closed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, NamedTuple

import numpy as np

from edge.backends import Backend
from edge.backends.inflight import Pipeline, Result
from edge.bundle import Bundle
from edge.daemon.archive import Archive, Entry
from edge.daemon.capture import Capture, Frame
from edge.daemon.config import DaemonConfig
from edge.daemon.drift import Drift
from edge.daemon.metrics import Metrics
from edge.daemon.postprocess import Thresholds, encode_mask, judge, quantise_map
from edge.daemon.publisher import Outgoing, Publisher
from edge.daemon.threads import Threaded
from edge.preprocess import FrameError, Roi, fit_frame
from edge.ratelimit import RateLimitedLog
from edge.wire import SCHEMA_VERSION, FrameHeader, MaskInfo

log = logging.getLogger("edge.worker")
NAN = float("nan")


class Model(NamedTuple):
    """What the worker judges with; replaced whole, so a batch never mixes two models or thresholds."""

    bundle: Bundle
    backend: Backend
    thresholds: Thresholds
    recipe: str = ""  # the recipe (edge/daemon/recipes.py) this bundle and these thresholds belong to


class Job(NamedTuple):
    """One batch on its way through the backend, with what judging it needs afterwards."""

    frames: list[Frame]
    model: Model  # the model the batch was submitted with: its thresholds judge it, even after a reload
    rois: dict[int, Roi]  # frame index -> the part of the frame the model saw
    reasons: dict[int, str]  # frame index -> why it is not judged; the others went to the backend, in order


class InferenceWorker(Threaded):
    def __init__(
        self,
        cfg: DaemonConfig,
        captures: list[Capture],
        notify: threading.Event,
        current_model: Callable[[], Model],
        publisher: Publisher,
        archive: Archive | None,
        metrics: Metrics,
        take_retired: Callable[[], list[Backend]] = list,
    ):
        self.cfg = cfg
        self.captures = captures
        self.notify = notify  # set by any capture when it queued a frame
        self.current_model = current_model
        self.take_retired = take_retired  # backends swapped out by reloads: the worker closes them when idle on them
        self.publisher = publisher
        self.archive = archive
        self.metrics = metrics
        self.crops = {c.id: Roi(c.crop.x, c.crop.y, c.crop.w, c.crop.h) if c.crop else None for c in cfg.cameras}
        self.resize = {c.id: c.resize for c in cfg.cameras}
        self.judged = {c.id: 0 for c in cfg.cameras}  # written by this thread only
        self.stats = {c.cfg.id: c.stats for c in captures}
        self.errors = RateLimitedLog(log)
        self.drift = Drift(cfg.drift, [c.id for c in cfg.cameras], _good_stats(current_model()))  # good-part scores vs the calibration
        self.beat = time.monotonic()  # last loop start: the watchdog pings only while this moves
        # stop() after the captures have stopped: the queues and the batches in flight are drained, then the thread ends.
        super().__init__("inference")

    def _run(self) -> None:
        turn = 0
        inflight = Pipeline()
        try:
            while True:
                self.beat = time.monotonic()
                batch = self._gather(turn, wait=not inflight)  # results waiting: take only what is ready
                turn += 1
                if batch:
                    model = self._model(inflight)
                    job, inputs = self._prepare(batch, model)
                    while inflight and not inflight.has_room(model.backend):
                        self._finish(*inflight.collect())  # oldest first: order is kept
                    inflight.submit(model.backend, inputs, job)
                    if inputs is not None:
                        self.metrics.batch.observe(len(inputs))
                        self.metrics.in_flight.observe(len(inflight))
                    while inflight.ready():  # a failed submit, or a batch with nothing to run
                        self._finish(*inflight.collect())
                elif inflight:
                    self._finish(*inflight.collect())  # nothing new to overlap with: don't hold frames
                elif self.stop_event.is_set() and all(c.queue.empty() for c in self.captures):
                    self._close_retired()
                    return
                else:
                    self.errors.tick()  # idle: say what repeated errors were held back
        except Exception:
            log.exception("inference worker failed")  # the daemon sees the thread gone and stops with exit 1
        finally:
            self.errors.flush()

    def _model(self, inflight: Pipeline) -> Model:
        """The model for the next batch. After a reload swapped the backend, the old one's batches in flight
        are collected and published first; retired backends are closed only once nothing runs on them."""
        retired = self.take_retired()  # first: a backend retired after this is closed at a later batch
        model = self.current_model()
        if inflight and inflight.backend is not model.backend:
            log.info("backend swapped: publishing the %d batch(es) in flight on the old one first", len(inflight))
            while inflight:
                self._finish(*inflight.collect())
        for backend in retired:
            backend.close()
        return model

    def _close_retired(self) -> None:
        for backend in self.take_retired():
            backend.close()

    def _gather(self, turn: int, wait: bool = True) -> list[Frame]:
        """Up to max_batch frames, one per camera per sweep (fair across cameras). With wait, block a
        little for a first frame and then at most batch_wait_ms for more; without, take what is ready."""
        batch: list[Frame] = []
        n = len(self.captures)
        deadline = None
        while len(batch) < self.cfg.max_batch:
            self.notify.clear()  # cleared before the sweep: a put after it sets it again, none is missed
            got = False
            for k in range(n):
                capture = self.captures[(turn + k) % n]
                try:
                    batch.append(capture.queue.get_nowait())
                    got = True
                except queue.Empty:
                    continue
                if len(batch) == self.cfg.max_batch:
                    return batch
            if got:
                continue
            if not batch:
                if not wait or self.stop_event.is_set() or not self.notify.wait(0.05):
                    return batch
                continue
            if deadline is None:
                deadline = time.monotonic() + (self.cfg.batch_wait_ms / 1000 if wait else 0.0)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.notify.wait(remaining):
                return batch
        return batch

    def _prepare(self, batch: list[Frame], model: Model) -> tuple[Job, np.ndarray | None]:
        """Fit every frame to the model input; (the job, the stacked inputs or None when none fits)."""
        spec, m = model.bundle.manifest.input, self.metrics
        now_ns = time.time_ns()
        t0 = time.perf_counter()
        inputs, rois, reasons = [], {}, {}
        for i, frame in enumerate(batch):
            m.stage["queue_wait"].observe(max(0, now_ns - frame.capture_ns) / 1e9)
            try:
                x, rois[i] = fit_frame(frame.image, spec, self.crops[frame.camera], self.resize[frame.camera])
                inputs.append(x)
                self._fits(frame.camera, "")
            except FrameError as e:
                reasons[i] = f"frame not judged: {e}"
                self._fits(frame.camera, str(e))
        m.stage["preprocess"].observe(time.perf_counter() - t0)
        return Job(batch, model, rois, reasons), (np.stack(inputs) if inputs else None)

    def _fits(self, camera: str, problem: str) -> None:
        """Mark the camera failed while its frames do not fit the model ("" = this one fits)."""
        stats = self.stats[camera]
        if stats.fault == problem:
            return
        stats.set(fault=problem)
        if problem:
            self.errors.log(
                ("unfit", camera), logging.WARNING,
                "camera %s: %s; its frames are published as unknown (not inspected) until the source or its crop/resize config is fixed",
                camera, problem,
            )
        else:
            self.errors.log(("fits", camera), logging.INFO, "camera %s: frames fit the model again; inspecting", camera)

    def _finish(self, job: Job, result: Result) -> None:
        """Judge and hand over one collected batch, in frame order."""
        m, model, reasons = self.metrics, job.model, dict(job.reasons)
        judged_idx = [i for i in range(len(job.frames)) if i not in reasons]
        if judged_idx:
            m.stage["infer"].observe(result.seconds)
            if result.times is not None:
                m.device_stage["h2d"].observe(result.times.h2d_ms / 1e3)
                m.device_stage["compute"].observe(result.times.compute_ms / 1e3)
                m.device_stage["d2h"].observe(result.times.d2h_ms / 1e3)
        if result.error is not None:
            e = result.error
            self.errors.log("infer", logging.ERROR, "inference failed on a batch of %d: %s: %s", len(judged_idx), type(e).__name__, e, exc_info=e)
            reasons.update({i: f"backend error: {type(e).__name__}: {e}" for i in judged_idx})
            judged_idx = []
        t0 = time.perf_counter()
        row = {i: k for k, i in enumerate(judged_idx)}
        for i, frame in enumerate(job.frames):
            if i not in row:
                self._publish_unknown(frame, model, reasons[i])
                continue
            try:
                self._publish(frame, model, result.maps[row[i]], float(result.scores[row[i]]), job.rois[i])
            except Exception as e:  # one frame's post-processing must not stop the line
                self.errors.log("postprocess", logging.ERROR, "post-processing failed for %s seq %d", frame.camera, frame.seq, exc_info=True)
                self._publish_unknown(frame, model, f"post-processing error: {type(e).__name__}: {e}")
        m.stage["postprocess"].observe(time.perf_counter() - t0)

    def _publish(self, frame: Frame, model: Model, amap: np.ndarray, score: float, roi: Roi) -> None:
        t, pub = model.thresholds, self.cfg.publish
        verdict, regions, mask, reason = judge(amap, score, t, min_region_px=self.cfg.postprocess.min_region_px, max_regions=self.cfg.postprocess.max_regions)
        grid = dict(height_px=amap.shape[0], width_px=amap.shape[1], roi_x=roi.x, roi_y=roi.y, roi_w=roi.w, roi_h=roi.h)
        mask_info, mask_part, map_info, map_part = MaskInfo(**grid), b"", MaskInfo(), b""
        if pub.mask_kind != "map":  # part 3: the binary mask, as schema 1 subscribers read it
            encoding = pub.mask if mask is not None else "none"
            mask_info, mask_part = MaskInfo(encoding=encoding, **grid), encode_mask(mask, encoding)
        if pub.mask_kind != "mask" and pub.mask != "none":  # the quantised map: part 4 ("both") or part 3 ("map")
            q = quantise_map(amap)
            map_info = MaskInfo(encoding=pub.mask, kind="map", map_scale=q.scale, map_offset=q.offset, **grid)
            map_part = encode_mask(q.codes, pub.mask)
            if pub.mask_kind == "map":
                (mask_info, mask_part), (map_info, map_part) = (map_info, map_part), (MaskInfo(), b"")
        header = self._header(frame, model, score, verdict, regions, mask_info, reason, map_info)
        self.drift.observe(frame.camera, score, verdict, _good_stats(model))
        self._send(frame, header, mask_part, mask, map_part, amap)

    def _publish_unknown(self, frame: Frame, model: Model, reason: str) -> None:
        header = self._header(frame, model, NAN, "unknown", [], MaskInfo(), reason)
        self._send(frame, header, b"", None)

    def _header(self, frame: Frame, model: Model, score, verdict, regions, mask_info, reason, map_info: MaskInfo = MaskInfo()) -> FrameHeader:
        t = model.thresholds
        return FrameHeader(
            schema_version=SCHEMA_VERSION, camera=frame.camera, seq=frame.seq, capture_ns=frame.capture_ns, publish_ns=0,
            score=score, threshold=NAN if t.image is None else t.image, verdict=verdict, model_id=model.bundle.model_id,
            regions=regions, mask=mask_info, reason=reason, pixel_threshold=NAN if t.pixel is None else t.pixel, source=frame.source,
            review_threshold=NAN if t.review is None else t.review, map=map_info,
            part_id=frame.part_id, recipe=model.recipe, trigger_id=frame.trigger_id,
        )

    def _send(self, frame: Frame, header: FrameHeader, mask_bytes: bytes, mask: np.ndarray | None, map_bytes: bytes = b"", amap: np.ndarray | None = None) -> None:
        self.publisher.submit(Outgoing(header, mask_bytes, time.monotonic(), map_bytes))
        self.judged[frame.camera] += 1
        self.metrics.judged(frame.camera, header.verdict)
        if self.archive is not None and self.archive.wants(header.verdict):
            # a copy: a backend may reuse its output buffer for the next batch while the archive is still behind
            self.archive.submit(Entry(frame.image, mask, header, None if amap is None else np.array(amap, np.float32)))


def _good_stats(model: Model):
    """The good-score statistics drift is measured against: those of the calibration in the bundle."""
    cal = model.bundle.manifest.calibration
    return cal.good_stats if cal is not None else None
