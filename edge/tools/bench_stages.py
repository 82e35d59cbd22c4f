"""Which stage of the daemon costs what per frame, and what ONNX Runtime's spinning does beside a busy process.

Part of `ssae edge bench` (or alone: `ssae edge bench --only-stages`). Each stage runs on its own, in this
process, on the benchmark's frames and the bundle's real anomaly maps, and is charged the CPU time it
takes (time.process_time, so threads a library starts for it are counted) per frame:

    decode       MJPG grab + retrieve of the video frames (OpenCV, as the capture reads a file)
    fit_frame    the model-sized frame as it comes, and a 1280x1024 camera frame cropped and resized
    judge        verdict, mask, regions: a frame with no pixel above threshold, and a defect frame
    mask encode  "raw" and "png" on the defect masks
    publish      header encode + send on a real XPUB, received and mask-decoded by a Subscriber in a thread
    model        ONNX Runtime per frame at the daemon's default batch, for scale

CPU time, not wall time: on a 2-core box every millisecond another stage burns is taken from inference,
and CPU time is also what stays readable on a machine that others load. The spin probe times the model
at that batch with ONNX Runtime's spinning on and off, alone and beside one busy process (a Python loop),
the co-located load a line box meets (a second daemon, a web view, an adapter).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import msgspec
import numpy as np

CAMERA_FRAME = (1024, 1280)  # (H, W) of the camera frame in the fit_frame row: a common industrial sensor


class StageCost(msgspec.Struct, frozen=True, kw_only=True):
    stage: str
    cpu_ms: float  # CPU time per frame
    wall_ms: float  # wall time per frame (inflated when others load the machine)
    note: str = ""


class SpinProbe(msgspec.Struct, frozen=True, kw_only=True):
    batch: int
    threads: int
    fps: dict[str, float]  # "spin off" / "spin on" / "spin off + busy" / "spin on + busy" -> images/s


class StageReport(msgspec.Struct, frozen=True, kw_only=True):
    size_px: int
    frames: int
    stages: list[StageCost]
    model_cpu_ms: float  # per frame at the default batch, spin off
    model_wall_ms: float
    spin: SpinProbe | None = None

    @property
    def overhead_cpu_ms(self) -> float:
        """One frame's way through the daemon besides the model: decode, fit, judge (defect), raw mask, publish."""
        pick = {"decode", "fit_frame (model size)", "judge (defect frame)", "mask encode raw", "publish + subscriber (raw mask)"}
        return sum(s.cpu_ms for s in self.stages if s.stage in pick)


def _timed(fn, n: int) -> tuple[float, float]:
    """(cpu ms, wall ms) per call of fn(i) for i in range(n), after one warm-up call."""
    fn(0)
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.process_time() - c0) / n * 1000, (time.perf_counter() - t0) / n * 1000


def measure_decode(video: Path) -> StageCost:
    import cv2

    cap = cv2.VideoCapture(str(video))
    n, c0, t0 = 0, time.process_time(), time.perf_counter()
    try:
        while cap.grab():
            ok, _ = cap.retrieve()
            n += ok
    finally:
        cap.release()
    cpu, wall = (time.process_time() - c0) / max(n, 1) * 1000, (time.perf_counter() - t0) / max(n, 1) * 1000
    return StageCost(stage="decode", cpu_ms=cpu, wall_ms=wall, note=f"MJPG, {n} frames")


def measure_post(frames: np.ndarray, maps: np.ndarray, scores: np.ndarray, spec) -> list[StageCost]:
    """fit_frame, judge, mask encoding on real maps; thresholds placed so that some frames are defects."""
    import cv2

    from edge.daemon.postprocess import Thresholds, encode_mask, judge
    from edge.preprocess import Roi, fit_frame

    n = len(frames)
    out = []
    cpu, wall = _timed(lambda i: fit_frame(frames[i % n], spec), 200)
    out.append(StageCost(stage="fit_frame (model size)", cpu_ms=cpu, wall_ms=wall, note="no resize"))
    camera = cv2.resize(frames[0], CAMERA_FRAME[::-1])
    crop = Roi(64, 32, CAMERA_FRAME[1] - 128, CAMERA_FRAME[0] - 64)
    cpu, wall = _timed(lambda i: fit_frame(camera, spec, crop), 50)
    out.append(StageCost(stage="fit_frame (camera frame)", cpu_ms=cpu, wall_ms=wall, note=f"{CAMERA_FRAME[1]}x{CAMERA_FRAME[0]}, crop + INTER_AREA resize"))
    # Pixel threshold at the 99.5th percentile of all maps: the frames with the hottest maps get regions.
    pixel = float(np.percentile(maps, 99.5))
    image = float(np.median(scores))
    t = Thresholds(image=image, pixel=pixel, origin="bench")
    hot = [i for i in range(n) if float(maps[i].max()) > pixel] or [int(np.argmax(scores))]
    cold = Thresholds(image=float(maps.max()) + 1, pixel=float(maps.max()) + 1, origin="bench")
    cpu, wall = _timed(lambda i: judge(maps[i % n], float(scores[i % n]), cold), 200)
    out.append(StageCost(stage="judge (ok frame)", cpu_ms=cpu, wall_ms=wall, note="no pixel above threshold"))
    cpu, wall = _timed(lambda i: judge(maps[hot[i % len(hot)]], float(scores[hot[i % len(hot)]]), t), 200)
    regions = np.mean([len(judge(maps[i], float(scores[i]), t).regions) for i in hot])
    out.append(StageCost(stage="judge (defect frame)", cpu_ms=cpu, wall_ms=wall, note=f"mask + connected components, {regions:.1f} regions"))
    masks = [judge(maps[i], float(scores[i]), t).mask for i in hot]
    for encoding in ("raw", "png"):
        size = np.mean([len(encode_mask(m, encoding)) for m in masks])
        cpu, wall = _timed(lambda i, enc=encoding: encode_mask(masks[i % len(masks)], enc), 200)
        out.append(StageCost(stage=f"mask encode {encoding}", cpu_ms=cpu, wall_ms=wall, note=f"{size:,.0f} bytes"))
    return out


def measure_publish(masks: dict[str, bytes], size_px: int, n: int = 500) -> list[StageCost]:
    """Publisher's send and a Subscriber's receive + decode_mask, both in this process (zmq I/O threads included)."""
    return [_publish_cost(encoding, mask, size_px, n) for encoding, mask in masks.items()]


def _publish_cost(encoding: str, mask: bytes, size_px: int, n: int) -> StageCost:
    import zmq

    from edge.client.subscriber import FrameEvent, Subscriber, decode_mask
    from edge.wire import SCHEMA_VERSION, FrameHeader, MaskInfo, Region

    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.linger, pub.sndhwm = 0, 100_000
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    got = [0]
    ready = threading.Event()

    def receive():
        with Subscriber(f"tcp://127.0.0.1:{port}", masks=True, health=False, first_heartbeat_s=60) as sub:
            ready.set()
            deadline = time.monotonic() + 60
            while got[0] < n + 1 and time.monotonic() < deadline:
                event = sub.receive(timeout_s=0.2)
                if isinstance(event, FrameEvent):
                    decode_mask(event.header.mask, event.mask)
                    got[0] += 1

    rx = threading.Thread(target=receive, name="bench-subscriber", daemon=True)
    rx.start()
    try:
        ready.wait(10)
        if not pub.poll(10_000):
            raise RuntimeError("the benchmark's subscriber thread did not subscribe within 10 s")
        pub.recv()  # the subscription: from here on nothing sent is lost to the slow-joiner window
        encoder = msgspec.msgpack.Encoder()
        header = FrameHeader(schema_version=SCHEMA_VERSION, camera="cam0", seq=0, capture_ns=time.time_ns(), publish_ns=0, score=0.5, threshold=0.25,
                             verdict="defect", model_id="0" * 64, regions=[Region(x=1, y=2, w=3, h=4, area_px=9, peak_score=0.6)] * 4,
                             mask=MaskInfo(encoding=encoding, height_px=size_px, width_px=size_px, roi_w=size_px, roi_h=size_px))
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(n + 1):
            h = msgspec.structs.replace(header, seq=i, publish_ns=time.time_ns())
            pub.send_multipart([b"frame.cam0", encoder.encode(h), mask], copy=len(mask) < 65536)  # as the publisher sends
        rx.join(60)
        cpu, wall = (time.process_time() - c0) / n * 1000, (time.perf_counter() - t0) / n * 1000
    finally:
        pub.close()
        ctx.term()
    return StageCost(stage=f"publish + subscriber ({encoding} mask)", cpu_ms=cpu, wall_ms=wall,
                     note=f"send, zmq I/O, receive, decode_mask; {got[0]}/{n + 1} received")


def _busy(stop) -> None:
    """The co-located load: one process that wants a whole core."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def model_fps(bundle_dir: Path, frames: np.ndarray, *, batch: int, spin: bool, measure_s: float, threads: int = 0) -> tuple[float, float]:
    """(images/s, CPU ms per frame) of ONNX Runtime alone at one batch and spin setting."""
    from edge.backends import open_backend
    from edge.bundle import load_bundle

    backend = open_backend(load_bundle(bundle_dir), "onnxruntime", threads=threads, max_batch=batch, spin=spin)
    try:
        x = np.ascontiguousarray(frames[:batch])
        for _ in range(2):
            backend.infer(x)
        calls, c0, t0 = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < measure_s or calls < 3:
            backend.infer(x)
            calls += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        backend.close()
    return calls * batch / wall, cpu / (calls * batch) * 1000


def spin_probe(bundle_dir: Path, frames: np.ndarray, *, batch: int, measure_s: float) -> SpinProbe:
    from edge.backends.ort import usable_cores

    fps = {}
    for spin in (False, True):
        fps[f"spin {'on' if spin else 'off'}"] = model_fps(bundle_dir, frames, batch=batch, spin=spin, measure_s=measure_s)[0]
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    busy = ctx.Process(target=_busy, args=(stop,), name="bench-busy", daemon=True)
    busy.start()
    try:
        time.sleep(0.5)  # the load is running before the timing starts
        for spin in (False, True):
            fps[f"spin {'on' if spin else 'off'} + busy"] = model_fps(bundle_dir, frames, batch=batch, spin=spin, measure_s=measure_s)[0]
    finally:
        stop.set()
        busy.join(10)
        if busy.is_alive():
            busy.terminate()
    return SpinProbe(batch=batch, threads=usable_cores(), fps=fps)


def measure_stages(bundle_dir: Path, frames: np.ndarray, video: Path, *, batch: int, measure_s: float, probe: bool = True) -> StageReport:
    """Every stage on its own; `batch` is the daemon's default max_batch (the model row and the spin probe)."""
    from edge.backends import open_backend
    from edge.bundle import load_bundle
    from edge.daemon.postprocess import Thresholds, encode_mask, judge

    bundle = load_bundle(bundle_dir)
    spec = bundle.manifest.input
    backend = open_backend(bundle, "onnxruntime", max_batch=batch)
    try:
        outs = [backend.infer(np.ascontiguousarray(frames[i : i + batch])) for i in range(0, len(frames), batch)]
    finally:
        backend.close()
    maps, scores = np.concatenate([m for m, _ in outs]), np.concatenate([s for _, s in outs])
    stages = [measure_decode(video), *measure_post(frames, maps, scores, spec)]
    pixel = float(np.percentile(maps, 99.5))
    hot = int(np.argmax(maps.reshape(len(maps), -1).max(axis=1)))
    mask = judge(maps[hot], float(scores[hot]), Thresholds(image=0.0, pixel=pixel, origin="bench")).mask
    stages += measure_publish({"raw": encode_mask(mask, "raw"), "png": encode_mask(mask, "png")}, spec.height_px)
    fps, cpu_ms = model_fps(bundle_dir, frames, batch=batch, spin=False, measure_s=measure_s)
    spin = spin_probe(bundle_dir, frames, batch=batch, measure_s=measure_s) if probe else None
    return StageReport(size_px=spec.height_px, frames=len(frames), stages=stages, model_cpu_ms=cpu_ms, model_wall_ms=1000 / fps, spin=spin)
