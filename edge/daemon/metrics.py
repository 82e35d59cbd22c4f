"""Prometheus metrics of one daemon, in its own registry (two daemons in one process never mix).

Latencies are observed where they happen (histograms per stage). Camera counters are not duplicated:
a collector reads the captures' own counters at scrape time, so the heartbeat and /metrics agree.

    ssae_stage_seconds{stage}                 queue_wait, preprocess, infer (per batch, submit to results), postprocess, publish_wait
    ssae_capture_to_publish_seconds{camera}   grab to send, the latency a PLC sees
    ssae_batch_size                            frames per inference call
    ssae_batches_in_flight                     batches in the backend at each submit, that one included (1 = no overlap)
    ssae_device_stage_seconds{stage}          h2d, compute, d2h per batch, timed on the device (TensorRT, torch-cuda)
    ssae_frames_judged_total{camera,verdict}
    ssae_frames_captured_total / ssae_frames_dropped_total / ssae_reconnects_total / ssae_skipped_files_total {camera}
    ssae_camera_fps{camera}, ssae_camera_state{camera,state} (1 for the current state)
    ssae_good_score_drift{camera}              good-part score quantile in the calibrated band: 0 = good p50, 1 = good p99 (NaN: none yet)
    ssae_good_score_drift_state{camera,state}  1 for the current drift state (ok, high, low, warming-up); absent when not checked
    ssae_publish_dropped_total{reason}         queue (publisher behind) or hwm (drop-and-count mode)
    ssae_heartbeats_total, ssae_reloads_total{result}
    ssae_archive_entries_total{outcome}, ssae_archive_bytes   with an archive: written, skipped (queue full), failed, deleted
"""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import start_http_server

from edge.daemon.drift import STATES as DRIFT_STATES
from edge.errors import UserError
from edge.wire import CameraHealth

STAGES = ("queue_wait", "preprocess", "infer", "postprocess", "publish_wait")
DEVICE_STAGES = ("h2d", "compute", "d2h")
STATES = ("starting", "streaming", "reconnecting", "failed", "finished")
# From 0.5 ms to 10 s: a 32x32 test model and a 1024x1024 CPU model both land inside.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A GPU uploads a 256x256 frame in tens of microseconds: device stages start at 10 us.
DEVICE_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class _CameraCollector:
    """Reads the capture (and archive) counters at scrape time."""

    def __init__(self, cameras: Callable[[], list[CameraHealth]], archive: Callable[[], dict[str, int]]):
        self.cameras = cameras
        self.archive = archive

    def collect(self) -> Iterable:
        captured = CounterMetricFamily("ssae_frames_captured", "Frames captured (each got a seq)", labels=["camera"])
        dropped = CounterMetricFamily("ssae_frames_dropped", "Frames dropped by the camera queue policy", labels=["camera"])
        reconnects = CounterMetricFamily("ssae_reconnects", "Source reconnect attempts", labels=["camera"])
        skipped = CounterMetricFamily("ssae_skipped_files", "Unreadable files skipped in folder sources", labels=["camera"])
        fps = GaugeMetricFamily("ssae_camera_fps", "Capture rate over the last seconds", labels=["camera"])
        state = GaugeMetricFamily("ssae_camera_state", "1 for the camera's current state", labels=["camera", "state"])
        drift = GaugeMetricFamily("ssae_good_score_drift", "Good-part score quantile in the calibrated band (0 = good p50, 1 = good p99)", labels=["camera"])
        drift_state = GaugeMetricFamily("ssae_good_score_drift_state", "1 for the current drift state", labels=["camera", "state"])
        for cam in self.cameras():
            captured.add_metric([cam.camera], cam.frames_captured)
            dropped.add_metric([cam.camera], cam.frames_dropped)
            reconnects.add_metric([cam.camera], cam.reconnects)
            skipped.add_metric([cam.camera], cam.skipped_files)
            fps.add_metric([cam.camera], cam.fps)
            for s in STATES:
                state.add_metric([cam.camera, s], 1.0 if cam.state == s else 0.0)
            if cam.drift_state:  # "": not checked (no calibrated band, or drift.window = 0)
                drift.add_metric([cam.camera], cam.drift)
                for s in DRIFT_STATES:
                    drift_state.add_metric([cam.camera, s], 1.0 if cam.drift_state == s else 0.0)
        yield from (captured, dropped, reconnects, skipped, fps, state, drift, drift_state)
        counts = self.archive()
        if counts:
            archive = CounterMetricFamily("ssae_archive_entries", "Archive entries by outcome", labels=["outcome"])
            for outcome in ("written", "skipped", "failed", "deleted"):
                archive.add_metric([outcome], counts.get(outcome, 0))
            yield archive
            yield GaugeMetricFamily("ssae_archive_bytes", "Bytes the archive holds", value=counts.get("bytes", 0))

    def describe(self) -> Iterable:
        return []  # unchecked collector: families are built at scrape time


class Metrics:
    def __init__(self, cameras: Callable[[], list[CameraHealth]] = list, archive: Callable[[], dict[str, int]] = dict):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        stage = Histogram("ssae_stage_seconds", "Time per pipeline stage", ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage = {name: stage.labels(name) for name in STAGES}  # children cached: labels() costs a lookup
        self._e2e = Histogram("ssae_capture_to_publish_seconds", "Grab to send", ["camera"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("ssae_batch_size", "Frames per inference call", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.in_flight = Histogram("ssae_batches_in_flight", "Batches in the backend at each submit, that one included", buckets=(1, 2, 3, 4, 8), registry=r)
        device = Histogram("ssae_device_stage_seconds", "Upload, compute and download per batch, timed on the device", ["stage"], buckets=DEVICE_BUCKETS, registry=r)
        self.device_stage = {name: device.labels(name) for name in DEVICE_STAGES}
        self._judged = Counter("ssae_frames_judged", "Frames judged, by verdict", ["camera", "verdict"], registry=r)
        self._publish_dropped = Counter("ssae_publish_dropped", "Messages the publisher could not send", ["reason"], registry=r)
        self.heartbeats = Counter("ssae_heartbeats", "Heartbeats sent", registry=r)
        self._reloads = Counter("ssae_reloads", "Bundle/threshold reloads", ["result"], registry=r)
        r.register(_CameraCollector(cameras, archive))
        self._children: dict[tuple, object] = {}
        self.server = None

    def _child(self, metric, *labels):
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def judged(self, camera: str, verdict: str) -> None:
        self._child(self._judged, camera, verdict).inc()

    def end_to_end(self, camera: str, seconds: float) -> None:
        self._child(self._e2e, camera).observe(seconds)

    def publish_dropped(self, reason: str, n: int = 1) -> None:
        self._child(self._publish_dropped, reason).inc(n)

    def reload(self, ok: bool) -> None:
        self._child(self._reloads, "ok" if ok else "failed").inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the /metrics HTTP server; returns the port bound (port 0 picks a free one)."""
        try:
            self.server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise UserError(f"metrics.port = {port}: cannot listen on {host}:{port} ({e.strerror}); choose another port or stop the other process") from None
        return self.server.server_address[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
