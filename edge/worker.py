"""The inference worker: gathers frames across cameras into batches, runs the model, judges, hands over.

    captures' queues ──► gather (≤ max_batch, fair across cameras) ──► fit_frame (crop, resize, channels)
        ──► backend.infer (one call per batch) ──► judge (verdict, mask, regions) ──► publisher (+ archive)

A frame that cannot be judged (wrong size or channels, a backend error, a post-processing error) is still
published, as verdict "unknown" with the reason: the line never loses a part silently. The model is read
once per batch through `current_model`, so a reload takes effect between two batches, never inside one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, NamedTuple

import numpy as np

from edge.archive import Archive, Entry
from edge.backend import Backend
from edge.bundle import Bundle
from edge.capture import Capture, Frame
from edge.config import DaemonConfig
from edge.metrics import Metrics
from edge.postprocess import Thresholds, encode_mask, judge
from edge.preprocess import FrameError, Roi, fit_frame
from edge.publisher import Outgoing, Publisher
from edge.wire import SCHEMA_VERSION, FrameHeader, MaskInfo

log = logging.getLogger("edge.worker")
NAN = float("nan")


class Model(NamedTuple):
    """What the worker judges with; replaced whole, so a batch never mixes two models or thresholds."""

    bundle: Bundle
    backend: Backend
    thresholds: Thresholds


class InferenceWorker:
    def __init__(
        self,
        cfg: DaemonConfig,
        captures: list[Capture],
        notify: threading.Event,
        current_model: Callable[[], Model],
        publisher: Publisher,
        archive: Archive | None,
        metrics: Metrics,
    ):
        self.cfg = cfg
        self.captures = captures
        self.notify = notify  # set by any capture when it queued a frame
        self.current_model = current_model
        self.publisher = publisher
        self.archive = archive
        self.metrics = metrics
        self.crops = {c.id: Roi(c.crop.x, c.crop.y, c.crop.w, c.crop.h) if c.crop else None for c in cfg.cameras}
        self.resize = {c.id: c.resize for c in cfg.cameras}
        self.judged = {c.id: 0 for c in cfg.cameras}  # written by this thread only
        self.beat = time.monotonic()  # last loop start: the watchdog pings only while this moves
        self.stop_event = threading.Event()  # finish what the queues hold, then return
        self.thread = threading.Thread(name="inference", target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Call after the captures have stopped: the queues are drained, then the thread ends."""
        self.stop_event.set()

    def join(self, timeout: float) -> bool:
        if self.thread.ident is not None:
            self.thread.join(timeout)
        return not self.thread.is_alive()

    def _run(self) -> None:
        turn = 0
        try:
            while True:
                self.beat = time.monotonic()
                batch = self._gather(turn)
                turn += 1
                if batch:
                    self._judge(batch)
                elif self.stop_event.is_set() and all(c.queue.empty() for c in self.captures):
                    return
        except Exception:
            log.exception("inference worker failed")  # the daemon sees the thread gone and stops with exit 1

    def _gather(self, turn: int) -> list[Frame]:
        """Up to max_batch frames, one per camera per sweep (fair across cameras), without waiting for more
        than batch_wait_ms once the first frame is in hand."""
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
                if self.stop_event.is_set() or not self.notify.wait(0.05):
                    return batch
                continue
            if deadline is None:
                deadline = time.monotonic() + self.cfg.batch_wait_ms / 1000
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.notify.wait(remaining):
                return batch
        return batch

    def _judge(self, batch: list[Frame]) -> None:
        model = self.current_model()
        spec, m = model.bundle.manifest.input, self.metrics
        now_ns = time.time_ns()
        t0 = time.perf_counter()
        inputs, rois, reasons = [], {}, {}
        for i, frame in enumerate(batch):
            m.stage["queue_wait"].observe(max(0, now_ns - frame.capture_ns) / 1e9)
            try:
                x, rois[i] = fit_frame(frame.image, spec, self.crops[frame.camera], self.resize[frame.camera])
                inputs.append(x)
            except FrameError as e:
                reasons[i] = f"frame not judged: {e}"
        t1 = time.perf_counter()
        m.stage["preprocess"].observe(t1 - t0)
        judged_idx = [i for i in range(len(batch)) if i not in reasons]
        amaps = scores = None
        if inputs:
            try:
                amaps, scores = model.backend.infer(np.stack(inputs))
            except Exception as e:  # the backend failing on one batch must not stop the line
                log.exception("inference failed on a batch of %d", len(inputs))
                reasons.update({i: f"backend error: {type(e).__name__}: {e}" for i in judged_idx})
                judged_idx = []
            m.batch.observe(len(inputs))
        t2 = time.perf_counter()
        m.stage["infer"].observe(t2 - t1)
        row = {i: k for k, i in enumerate(judged_idx)}
        for i, frame in enumerate(batch):
            if i not in row:
                self._publish_unknown(frame, model, reasons[i])
                continue
            try:
                self._publish(frame, model, amaps[row[i]], float(scores[row[i]]), rois[i])
            except Exception as e:  # one frame's post-processing must not stop the line
                log.exception("post-processing failed for %s seq %d", frame.camera, frame.seq)
                self._publish_unknown(frame, model, f"post-processing error: {type(e).__name__}: {e}")
        m.stage["postprocess"].observe(time.perf_counter() - t2)

    def _publish(self, frame: Frame, model: Model, amap: np.ndarray, score: float, roi: Roi) -> None:
        t = model.thresholds
        verdict, regions, mask, reason = judge(amap, score, t, min_region_px=self.cfg.postprocess.min_region_px, max_regions=self.cfg.postprocess.max_regions)
        encoding = self.cfg.publish.mask if mask is not None else "none"
        mask_info = MaskInfo(encoding=encoding, height_px=amap.shape[0], width_px=amap.shape[1], roi_x=roi.x, roi_y=roi.y, roi_w=roi.w, roi_h=roi.h)
        header = self._header(frame, model, score, verdict, regions, mask_info, reason)
        self._send(frame, header, encode_mask(mask, encoding), mask)

    def _publish_unknown(self, frame: Frame, model: Model, reason: str) -> None:
        header = self._header(frame, model, NAN, "unknown", [], MaskInfo(), reason)
        self._send(frame, header, b"", None)

    def _header(self, frame: Frame, model: Model, score, verdict, regions, mask_info, reason) -> FrameHeader:
        t = model.thresholds
        return FrameHeader(
            schema_version=SCHEMA_VERSION, camera=frame.camera, seq=frame.seq, capture_ns=frame.capture_ns, publish_ns=0,
            score=score, threshold=NAN if t.image is None else t.image, verdict=verdict, model_id=model.bundle.model_id,
            regions=regions, mask=mask_info, reason=reason, pixel_threshold=NAN if t.pixel is None else t.pixel, source=frame.source,
        )

    def _send(self, frame: Frame, header: FrameHeader, mask_bytes: bytes, mask: np.ndarray | None) -> None:
        self.publisher.submit(Outgoing(header, mask_bytes, time.monotonic()))
        self.judged[frame.camera] += 1
        self.metrics.judged(frame.camera, header.verdict)
        if self.archive is not None and self.archive.wants(header.verdict):
            self.archive.submit(Entry(frame.image, mask, header))
