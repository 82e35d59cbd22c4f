"""`ssae edge bench`: is the daemon as fast as the model allows on this machine, as shipped and tuned?

One run measures, on the same bundle and the same synthetic parts:
  raw         ONNX Runtime alone (edge.backends.open_backend), images/s per batch size, with its threads
              spinning (ONNX Runtime's default) and not (the daemon's default); the best is the ceiling, and
              the median batch-1 call is the single-frame model time
  end-to-end  the daemon (`python -m edge run`, its own process) on an MJPG video, every frame decoded,
              judged, post-processed and published to a subscriber in a third process that reads every
              frame and its mask; images/s over the steady state (the first frames, which warm ONNX Runtime,
              excluded). Set-ups, each timed in every round with raw at the best setting right before it:
                shipped   quick mode as the README shows it, nothing tuned: default batch, threads, spinning,
                          queue and mask (`ssae edge run --bundle B --source parts.avi --publish ...`)
                tuned     a config with queue "all", max_batch = the best raw batch, its spin setting
                <example> an example config's daemon settings (threads, spin, max_batch, batch_wait_ms,
                          publish, postprocess) on the same video (--example configs/edge/line.example.toml)
              Each round's ratio is its own (daemon / raw right before): on a shared machine the speed drifts
              by more than the target's 5 %. Every round is reported, with min / median / max.
  latency     capture -> publish per frame (the header's timestamps), in a daemon run whose file source is
              paced to half the single-frame capacity, as a live camera would deliver it
  memory      the daemon process's peak RSS (VmHWM from /proc, polled) over the runs
  stages      CPU time per frame of each stage on its own, and spinning beside a busy process
              (edge/tools/bench_stages.py)
Targets: end-to-end >= 0.95 x raw in every round, p99 latency <= 2 x single-frame model time, peak RSS <= 500 MB.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import numpy as np

from edge.errors import UserError
from edge.tools.bench_defaults import DEFAULTS
from edge.tools.bench_inputs import (
    ensure_bundle,
    ensure_thresholds,
    make_frames,
    write_video,
)
from edge.tools.bench_setups import (
    Setup,
    endpoint_now,
    example_config,
    example_how,
    shipped_args,
    tuned_config,
    write_toml,
)
from edge.tools.bench_stages import StageReport

RAW_BATCHES = (1, 2, 4, 8)
RSS_TARGET_MB = 500.0
RATIO_TARGET = 0.95
LATENCY_TARGET_X = 2.0


class RawResult(msgspec.Struct, frozen=True, kw_only=True):
    per_batch: dict[int, float]  # batch -> images/s, threads not spinning (the daemon's default)
    best_batch: int
    best_fps: float
    single_frame_ms: float  # median batch-1 call, at the best spin setting
    threads: int
    per_batch_spin: dict[int, float] = {}  # batch -> images/s, threads spinning (ONNX Runtime's own default)
    best_spin: bool = False  # the ceiling was reached with spinning threads


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    """One daemon run as the subscriber process saw it."""

    frames: int  # received
    lost: int  # seq gaps not reported as drops
    dropped: int  # reported by the daemon
    fps: float  # steady-state receive rate
    latency_p50_ms: float  # capture -> publish
    latency_p99_ms: float
    peak_rss_mb: float
    exit_code: int


class Trial(msgspec.Struct, frozen=True, kw_only=True):
    """Raw ONNX Runtime at the best setting, then one daemon run, back to back."""

    raw_fps: float
    run: RunResult

    @property
    def ratio(self) -> float:
        return self.run.fps / self.raw_fps


class Round(msgspec.Struct, frozen=True, kw_only=True):
    trials: dict[str, Trial]  # setup name -> its trial in this round


class BenchResult(msgspec.Struct, frozen=True, kw_only=True):
    command: str
    date: str
    cpu: str
    cores: int
    onnxruntime: str
    bundle: str
    size_px: int
    raw: RawResult
    setups: list[Setup]
    judging: str = ""  # the thresholds the daemon judged with (see ensure_thresholds)
    rounds: list[Round]
    latency: RunResult | None = None  # paced; None with --no-latency
    latency_pace_fps: float = 0.0
    stages: StageReport | None = None  # None with --no-stages

    def trials(self, setup: str) -> list[Trial]:
        return [r.trials[setup] for r in self.rounds if setup in r.trials]

    def spread(self, setup: str) -> tuple[float, float, float]:
        """(min, median, max) of the setup's per-round ratios."""
        ratios = sorted(t.ratio for t in self.trials(setup))
        return ratios[0], float(np.median(ratios)), ratios[-1]

    @property
    def peak_rss_mb(self) -> float:
        runs = [t.run for r in self.rounds for t in r.trials.values()] + ([self.latency] if self.latency else [])
        return max(run.peak_rss_mb for run in runs)


# ---------------------------------------------------------------------------------------------------
# Raw ONNX Runtime.


def measure_raw(bundle_dir: Path, frames: np.ndarray, *, batches=RAW_BATCHES, measure_s: float = DEFAULTS.measure_s, threads: int = 0,
                spins: tuple[bool, ...] = (False, True)) -> RawResult:
    """images/s per batch for each spin setting; the best (batch, spin) of all is the ceiling."""
    sweeps = {spin: _sweep(bundle_dir, frames, batches, measure_s, threads, spin) for spin in spins}
    best_spin, (per_batch, single_ms, threads_used) = max(sweeps.items(), key=lambda kv: max(kv[1][0].values()))
    best = max(per_batch, key=per_batch.get)
    return RawResult(per_batch=sweeps.get(False, sweeps[best_spin])[0], per_batch_spin=sweeps[True][0] if True in sweeps else {},
                     best_batch=best, best_spin=best_spin, best_fps=per_batch[best], single_frame_ms=single_ms, threads=threads_used)


def _sweep(bundle_dir: Path, frames: np.ndarray, batches, measure_s: float, threads: int, spin: bool) -> tuple[dict[int, float], float, int]:
    """(images/s per batch, median batch-1 call in ms, threads used) at one spin setting."""
    from edge.backends import open_backend
    from edge.bundle import load_bundle

    backend = open_backend(load_bundle(bundle_dir), "onnxruntime", threads=threads, max_batch=max(batches), spin=spin)
    per_batch: dict[int, float] = {}
    single: list[float] = []
    try:
        for b in batches:
            batch = np.ascontiguousarray(frames[:b])
            for _ in range(2):
                backend.infer(batch)  # warm-up: allocations and kernel selection
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < measure_s or calls < 3:
                t0 = time.perf_counter()
                backend.infer(batch)
                if b == 1:
                    single.append(time.perf_counter() - t0)
                calls += 1
            per_batch[b] = float(calls * b / (time.perf_counter() - started))
        threads_used = getattr(backend, "threads", threads)
    finally:
        backend.close()
    return per_batch, float(np.median(single)) * 1000 if single else float("nan"), threads_used


# ---------------------------------------------------------------------------------------------------
# The subscriber process.


class SinkRecord(msgspec.Struct, frozen=True, kw_only=True):
    seq: list[int]
    capture_ns: list[int]
    publish_ns: list[int]
    received_ns: list[int]
    lost: int
    dropped: int
    error: str = ""


def run_sink(endpoint: str, expect: int | None, out_path: str, stop, silence_s: float = 60.0) -> None:
    """Subscriber process: receive and decode every frame and its mask until `expect` frames, stop or silence."""
    from edge.client.subscriber import (
        FrameEvent,
        HeartbeatLost,
        Subscriber,
        decode_mask,
    )

    seqs, cap, pub, rx = [], [], [], []
    error = ""
    with Subscriber(endpoint, masks=True, first_heartbeat_s=silence_s) as sub:
        last = time.monotonic()
        while not stop.is_set() and (expect is None or len(seqs) < expect):
            event = sub.receive(timeout_s=0.2)
            if isinstance(event, FrameEvent):
                h = event.header
                decode_mask(h.mask, event.mask)  # what an adapter drawing or checking the mask pays
                seqs.append(h.seq), cap.append(h.capture_ns), pub.append(h.publish_ns), rx.append(event.received_ns)
                last = time.monotonic()
            elif isinstance(event, HeartbeatLost) and seqs:
                break  # the daemon finished (or died) after sending frames
            elif event is not None:
                last = time.monotonic()
            if time.monotonic() - last > silence_s:
                error = f"no message for {silence_s:.0f} s"
                break
        tally = sub.tally()
    record = SinkRecord(seq=seqs, capture_ns=cap, publish_ns=pub, received_ns=rx, lost=tally.lost, dropped=tally.dropped, error=error)
    Path(out_path).write_bytes(msgspec.msgpack.encode(record))


def read_hwm_mb(pid: int) -> float | None:
    """The process's peak resident set (VmHWM) so far, from /proc; None where there is no /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def wait_with_rss(proc: subprocess.Popen, timeout_s: float) -> tuple[int, float]:
    """Wait for the daemon; returns (exit code, its peak RSS in MB).

    VmHWM is read from /proc every 50 ms while it runs (it only grows, so the last reading is the peak up to
    then). Not ru_maxrss from wait4: Linux carries the parent's high-water mark across fork and exec into
    it, so it would report this benchmark process's memory (the frames it holds), not the daemon's.
    """
    deadline = time.monotonic() + timeout_s
    peak = 0.0
    while time.monotonic() < deadline:
        peak = max(peak, read_hwm_mb(proc.pid) or 0.0)
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, peak or usage.ru_maxrss / 1024.0
        time.sleep(0.05)
    proc.terminate()  # SIGTERM: the daemon drains and exits
    os.wait4(proc.pid, 0)
    raise UserError(f"the daemon did not finish within {timeout_s:.0f} s (stopped it); see its log beside the config")


def run_daemon(args: list[str], endpoint: str, work: Path, *, name: str, expect: int | None, timeout_s: float) -> RunResult:
    """`python -m edge <args>` publishing on `endpoint`, with a subscriber process; frames accounted for by the subscriber."""
    out_path = work / f"{name}.sink.msgpack"
    out_path.unlink(missing_ok=True)
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    sink = ctx.Process(target=run_sink, args=(endpoint, expect, str(out_path), stop), name=f"bench-sink-{name}", daemon=True)
    sink.start()
    log = open(work / f"{name}.log", "wb")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "edge", *args], stdout=log, stderr=subprocess.STDOUT)
        code, rss_mb = wait_with_rss(proc, timeout_s)
    finally:
        log.close()
        sink.join(timeout=10)
        stop.set()
        sink.join(timeout=10)
        if sink.is_alive():
            sink.terminate()
    if code != 0:
        raise UserError(f"the daemon exited with {code}; see {work / f'{name}.log'}")
    if not out_path.is_file():
        raise UserError(f"the subscriber process wrote no result ({out_path}); see {work / f'{name}.log'}")
    rec = msgspec.msgpack.decode(out_path.read_bytes(), type=SinkRecord)
    if rec.error or not rec.seq:
        raise UserError(f"the subscriber received {len(rec.seq)} frames ({rec.error or 'none'}); see {work / f'{name}.log'}")
    return summarise(rec, rss_mb, code)


def summarise(rec: SinkRecord, rss_mb: float, code: int) -> RunResult:
    rx = np.asarray(rec.received_ns, np.int64)
    lat = (np.asarray(rec.publish_ns, np.int64) - np.asarray(rec.capture_ns, np.int64)) / 1e6
    skip = min(20, len(rx) // 10)  # the first frames warm ONNX Runtime up; raw excludes its warm-up too
    span_s = float(rx[-1] - rx[skip]) / 1e9 if len(rx) > skip + 1 else 0.0
    fps = (len(rx) - 1 - skip) / span_s if span_s > 0 else 0.0
    return RunResult(frames=len(rx), lost=rec.lost, dropped=rec.dropped, fps=fps,
                     latency_p50_ms=float(np.percentile(lat[skip:], 50)), latency_p99_ms=float(np.percentile(lat[skip:], 99)),
                     peak_rss_mb=rss_mb, exit_code=code)


# ---------------------------------------------------------------------------------------------------
# The whole benchmark (its report: edge/tools/bench_report.py).


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_bench(*, bundle: Path | None, work: Path, size_px: int = 256, frames: int = DEFAULTS.frames, latency_frames: int = DEFAULTS.latency_frames,
              measure_s: float = DEFAULTS.measure_s, rounds: int = DEFAULTS.rounds, tuned: bool = True, examples: list[Path] = (),
              latency: bool = True, stages: bool = True, only_stages: bool = False, command: str = "ssae edge bench", progress=print) -> BenchResult:
    import onnxruntime

    from edge.bundle import load_bundle
    from edge.daemon.config import DEFAULT_MAX_BATCH

    work.mkdir(parents=True, exist_ok=True)
    bundle_dir = ensure_bundle(bundle, work, size_px)
    progress(f"bundle: {bundle_dir}" + (" (an untrained default model)" if bundle is None else ""))
    spec = load_bundle(bundle_dir).manifest.input
    if (spec.height_px, spec.width_px) != (size_px, size_px):
        size_px = spec.height_px  # the bundle decides; --size only shapes a bundle built here
    images = make_frames(frames, size_px)
    video = write_video(work / f"parts-{size_px}-{frames}.avi", images)
    bundle_dir, judging = ensure_thresholds(bundle_dir, work, images, own=bundle is None)
    progress(f"judged with {judging}")
    report = None
    if stages or only_stages:
        from edge.tools.bench_stages import measure_stages

        progress("cost per stage (CPU time per frame) and spinning beside a busy process ...")
        report = measure_stages(bundle_dir, images[:40], video, batch=DEFAULT_MAX_BATCH["cpu"], measure_s=measure_s)
    progress("raw ONNX Runtime throughput per batch, spinning off and on ...")
    raw = measure_raw(bundle_dir, images, measure_s=measure_s, spins=(False,) if only_stages else (False, True))
    progress("  spin off: " + ", ".join(f"batch {b}: {v:.1f}/s" for b, v in raw.per_batch.items())
             + ("; spin on: " + ", ".join(f"batch {b}: {v:.1f}/s" for b, v in raw.per_batch_spin.items()) if raw.per_batch_spin else "")
             + f"; best batch {raw.best_batch}, spin {'on' if raw.best_spin else 'off'}; single frame {raw.single_frame_ms:.1f} ms")
    setups = [] if only_stages else [Setup(name="shipped", how="`ssae edge run --bundle B --source parts.avi --publish tcp://127.0.0.1:PORT "
                                                          "--policy all --wait-for-subscriber 60`: every other setting its default")]
    if tuned and not only_stages:
        setups.append(Setup(name="tuned", how=f"config: queue all, max_batch {raw.best_batch} (best raw batch), spin {'on' if raw.best_spin else 'off'}, "
                                              f"threads {raw.threads}"))
    for example in () if only_stages else examples:
        setups.append(Setup(name=example.stem, how=example_how(example), config=str(example)))
    done: list[Round] = []
    for k in range(1, rounds + 1 if setups else 1):
        trials = {}
        for setup in setups:
            again = measure_raw(bundle_dir, images, batches=(raw.best_batch,), measure_s=measure_s, threads=raw.threads, spins=(raw.best_spin,))
            endpoint = endpoint_now()
            if setup.name == "shipped":
                args = shipped_args(bundle_dir, video, endpoint)
            else:
                raw_cfg = (example_config(Path(setup.config), bundle_dir, video, endpoint) if setup.config
                           else tuned_config(bundle_dir, video, endpoint, threads=raw.threads, spin=raw.best_spin, batch=raw.best_batch))
                args = ["run", str(write_toml(work / f"{setup.name}.toml", raw_cfg))]
            progress(f"round {k}/{rounds}, {setup.name}: raw batch {raw.best_batch} {again.best_fps:.1f}/s; daemon on {frames} frames ...")
            run = run_daemon(args, endpoint, work, name=setup.name, expect=frames, timeout_s=60 + 5 * frames / max(raw.best_fps, 1))
            trials[setup.name] = Trial(raw_fps=again.best_fps, run=run)
            progress(f"  {run.fps:.1f}/s = {trials[setup.name].ratio:.3f} x raw (lost {run.lost}, dropped {run.dropped})")
        if trials:
            done.append(Round(trials=trials))
    lat, pace = None, 0.0
    if latency and not only_stages:
        pace = 0.5 * 1000.0 / raw.single_frame_ms
        lat_video = write_video(work / f"parts-{size_px}-{latency_frames}.avi", images[:latency_frames])
        progress(f"latency: daemon paced at {pace:.1f} fps, queue latest, max_batch {raw.best_batch} ...")
        endpoint = endpoint_now()
        cfg = tuned_config(bundle_dir, lat_video, endpoint, threads=raw.threads, spin=raw.best_spin, batch=raw.best_batch, queue="latest",
                           pace_fps=round(pace, 2), queue_size=1)
        lat = run_daemon(["run", str(write_toml(work / "latency.toml", cfg))], endpoint, work, name="latency", expect=None,
                         timeout_s=60 + 3 * latency_frames / pace)
        progress(f"  p50 {lat.latency_p50_ms:.1f} ms, p99 {lat.latency_p99_ms:.1f} ms")
    return BenchResult(command=command, date=dt.datetime.now().astimezone().isoformat(timespec="minutes"), cpu=cpu_model(),
                       cores=len(os.sched_getaffinity(0)), onnxruntime=onnxruntime.__version__, bundle=str(bundle_dir),
                       size_px=size_px, judging=judging, raw=raw, setups=setups, rounds=done, latency=lat, latency_pace_fps=pace, stages=report)
