"""The edge daemon: cameras -> one batching inference worker -> post-processing -> ZeroMQ publisher.

    capture-<cam> ──► queue (latest | all) ─┐
    capture-<cam> ──► queue (latest | all) ─┼─► inference (edge/daemon/worker.py): fit_frame, backend (batch across cameras; ≥ 2 in flight on a GPU),
                                             │   judge (verdict, mask, regions) ──► publisher ──► XPUB
                                             │                                  └─► archive (optional)
    control (REP) ── reload / apply / status ┘          heartbeats on health.<name> every heartbeat_s

The main thread supervises: sd_notify READY/WATCHDOG, SIGHUP reloads, and the stop: when every source
is a finite file or folder that has ended, or on SIGTERM/SIGINT, capture stops first, then every frame
already captured is judged and published (within drain_timeout_s), then the publisher flushes and closes.

A reload (SIGHUP or control) loads and test-runs the new bundle fully on the side, then swaps it in
between two batches; if anything fails the old model keeps running and the error is reported.
A recipe change (control `SelectRecipe`, edge/daemon/recipes.py) takes the same path. A control
`Trigger` arms its camera's slot (edge/daemon/triggers.py): the next frame grabbed carries its part id.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Callable

import msgspec
import numpy as np
import zmq

from edge.backends import Backend, open_backend
from edge.bundle import load_bundle
from edge.daemon.archive import Archive
from edge.daemon.capture import Capture
from edge.daemon.config import DaemonConfig, load_config
from edge.daemon.control import ControlServer
from edge.daemon.handshakes import HandshakeLog
from edge.daemon.metrics import Metrics
from edge.daemon.postprocess import Thresholds, resolve_thresholds
from edge.daemon.publisher import Publisher
from edge.daemon.recipes import pick, same_recipe
from edge.daemon.triggers import TriggerSlot, arm_trigger
from edge.daemon.worker import InferenceWorker, Model
from edge.errors import UserError
from edge.manifest import BundleError
from edge.sdnotify import Notifier
from edge.security import start_server_security
from edge.wire import SCHEMA_VERSION, ApplyThresholds, CameraHealth, Health, Reload, Reply, Request, SelectRecipe, Status, Trigger

log = logging.getLogger("edge.daemon")
NAN = float("nan")


class Daemon:
    def __init__(self, cfg: DaemonConfig, *, config_path: str | Path | None = None):
        self.cfg = cfg
        self.config_path = Path(config_path) if config_path else None
        self.recipes = cfg.recipe_list  # re-read on SIGHUP
        start = cfg.start_recipe
        self.bundle_path = start.bundle  # the active recipe's (a Reload may point it elsewhere)
        self.config_thresholds = (start.image_threshold, start.pixel_threshold)  # re-read on SIGHUP
        self.started = time.monotonic()
        self.stop_event = threading.Event()
        self.abort_event = threading.Event()
        self.reload_event = threading.Event()
        self.model_lock = threading.Lock()
        self.reload_lock = threading.Lock()
        self.retired: list[Backend] = []
        self.notify = threading.Event()
        self.next_ping = 0.0
        self.exit_code = 0
        self.sd = Notifier()
        self.metrics = Metrics(self.camera_health, self._archive_counts)
        self.triggers = {c.id: TriggerSlot(c.id) for c in cfg.cameras}
        self.captures = [Capture(c, self.notify, self.triggers[c.id]) for c in cfg.cameras]
        self.model = self._load_model(self.bundle_path, *self.config_thresholds, recipe=start.name)
        self.ctx = zmq.Context()
        self.security = None
        try:
            self.security = start_server_security(self.ctx, cfg.security)  # the ZAP handler runs before any socket binds
            secure = self.security
            self.publisher = Publisher(self.ctx, cfg.publish, cfg.name, self.health, self.metrics, secure)
            self.control = ControlServer(self.ctx, cfg.control, self.handle, secure) if cfg.control else None
            watched = [(self.publisher.sock, "publish.endpoints")] + ([(self.control.sock, "control.endpoint")] if self.control else [])
            self.handshakes = HandshakeLog(self.ctx, watched) if self.security else None
            self.archive = Archive(cfg.archive) if cfg.archive else None
        except BaseException:
            self.model.backend.close()
            if self.security is not None:
                self.security.stop()
            self.ctx.destroy(linger=0)
            raise
        self.worker = InferenceWorker(
            cfg, self.captures, self.notify, self._current, self.publisher, self.archive, self.metrics, take_retired=self._take_retired
        )

    # --- model loading ------------------------------------------------------------------------------
    def _load_model(self, path: str, image: float | None, pixel: float | None, origin: str = "config", reuse: Model | None = None, *, recipe: str) -> Model:
        """Load, verify and test-run a bundle; reuse the running backend when only the calibration changed."""
        bundle = load_bundle(Path(path).expanduser())
        thresholds = resolve_thresholds(bundle.manifest.calibration, image, pixel, origin)
        if reuse is not None and reuse.bundle.model_id == bundle.model_id and reuse.bundle.path == bundle.path:
            return Model(bundle, reuse.backend, thresholds, recipe)
        try:
            backend = open_backend(bundle, self.cfg.backend, threads=self.cfg.threads, max_batch=self.cfg.max_batch, **backend_options(self.cfg))
        except ImportError as e:
            raise UserError(f"backend = {self.cfg.backend!r} is not available here ({e}); install it or use backend = \"onnxruntime\"") from None
        spec = bundle.manifest.input
        try:
            amap, score = backend.infer(np.zeros((1, spec.height_px, spec.width_px, spec.channels), np.uint8))
            if amap.shape != (1, spec.height_px, spec.width_px) or score.shape != (1,):
                raise ValueError(f"outputs {amap.shape} and {score.shape}, expected (1, {spec.height_px}, {spec.width_px}) and (1,)")
        except Exception as e:
            backend.close()
            raise BundleError(f"bundle refused: a test inference on {path} failed ({e}); re-export the bundle") from e
        return Model(bundle, backend, thresholds, recipe)

    def _swap(self, model: Model) -> None:
        with self.model_lock:
            old, self.model = self.model, model
            if old.backend is not model.backend:
                self.retired.append(old.backend)  # closed by the worker between batches

    def _current(self) -> Model:
        with self.model_lock:
            return self.model

    def _take_retired(self) -> list[Backend]:
        """Backends swapped out since the last call; the worker closes them once nothing runs on them."""
        with self.model_lock:
            retired, self.retired = self.retired, []
        return retired

    # --- reload / control -----------------------------------------------------------------------------
    def reload(self, bundle: str | None = None, *, reread_config: bool = False) -> Reply:
        """Re-read the bundle (and on SIGHUP the config's bundle and thresholds); swap only when all of it
        loaded. Thresholds applied over control are replaced: a reload means "what is on disk now"."""
        with self.reload_lock:
            if reread_config and self.security is not None:
                try:  # SIGHUP also re-reads the CURVE allow-list: admits new clients (revoking needs a restart)
                    self.security.auth.reload()
                except (UserError, OSError) as e:
                    log.error("allow-list reload failed, the old list stays: %s", e)
            recipes, name = self.recipes, self.model.recipe
            try:
                path, thresholds = bundle or self.bundle_path, self.config_thresholds
                if reread_config and self.config_path is not None:
                    fresh = load_config(self.config_path)
                    reloadable = ("bundle", "image_threshold", "pixel_threshold", "recipes", "recipe")
                    fixed = [f for f in fresh.__struct_fields__ if f not in reloadable]
                    if changed := [f for f in fixed if getattr(fresh, f) != getattr(self.cfg, f)]:
                        log.warning("reload: %s changed in %s; restart the daemon to apply that", ", ".join(changed), self.config_path)
                    recipes = fresh.recipe_list
                    active = same_recipe(recipes, name)
                    name, path, thresholds = active.name, bundle or active.bundle, (active.image_threshold, active.pixel_threshold)
                model = self._load_model(path, *thresholds, reuse=self.model, recipe=name)
            except (UserError, BundleError, OSError, ValueError) as e:
                self.metrics.reload(False)
                log.error("reload failed, the running model stays: %s", e)
                return Reply(ok=False, message=f"reload failed, the running model stays: {e}", **self._in_force())
            self.bundle_path, self.config_thresholds, self.recipes = path, thresholds, recipes
            self._swap(model)
            self.metrics.reload(True)
            log.info("reloaded %s: model %s, thresholds %s", path, model.bundle.model_id[:12], _describe(model.thresholds))
            return Reply(ok=True, message=f"reloaded {path}; thresholds {_describe(model.thresholds)}", **self._in_force())

    def apply_thresholds(self, image: float, pixel: float | None, review: float | None = None) -> Reply:
        if not (math.isfinite(image) and image >= 0) or (pixel is not None and not (math.isfinite(pixel) and pixel >= 0)):
            return Reply(ok=False, message=f"thresholds must be finite and >= 0 (got image {image}, pixel {pixel}); nothing changed", **self._in_force())
        if review is not None and not (math.isfinite(review) and 0 <= review < image):
            return Reply(ok=False, message=f"review threshold {review} must lie in 0 .. image threshold {image}; nothing changed", **self._in_force())
        with self.reload_lock:
            current = self.model
            thresholds = resolve_thresholds(current.bundle.manifest.calibration, image, pixel, "control", review)
            self._swap(current._replace(thresholds=thresholds))
        log.info("thresholds applied over control: %s", _describe(thresholds))
        return Reply(ok=True, message=f"applied; thresholds {_describe(thresholds)}", **self._in_force())

    def select_recipe(self, name: str, number: int) -> Reply:
        """Switch product: the recipe's bundle is loaded and test-run on the side, then swapped in between two
        batches; refused (the running recipe stays) when it fails its checks."""
        with self.reload_lock:
            try:
                recipe = pick(self.recipes, name, number)
                if recipe.name == self.model.recipe and recipe.bundle == self.bundle_path:
                    return Reply(ok=True, message=f"recipe {recipe.name} is already active", **self._in_force())
                model = self._load_model(recipe.bundle, recipe.image_threshold, recipe.pixel_threshold, reuse=self.model, recipe=recipe.name)
            except (UserError, BundleError, OSError, ValueError) as e:
                self.metrics.reload(False)
                log.error("recipe change refused, recipe %s stays: %s", self.model.recipe, e)
                return Reply(ok=False, message=f"recipe change refused, recipe {self.model.recipe} stays: {e}", **self._in_force())
            self.bundle_path, self.config_thresholds = recipe.bundle, (recipe.image_threshold, recipe.pixel_threshold)
            self._swap(model)
            self.metrics.reload(True)
        log.info("recipe %s: bundle %s, model %s, thresholds %s", recipe.name, recipe.bundle, model.bundle.model_id[:12], _describe(model.thresholds))
        return Reply(ok=True, message=f"recipe {recipe.name} active from the next batch; thresholds {_describe(model.thresholds)}", **self._in_force())

    def handle(self, request: Request) -> Reply:
        match request:
            case Trigger(camera=camera, part_id=part_id, timeout_ms=timeout_ms):
                trigger_id, why = arm_trigger(self.triggers, self.camera_health(), camera, part_id, timeout_ms)
                return Reply(ok=bool(trigger_id), message=why or f"trigger {trigger_id} armed", trigger_id=trigger_id, **self._in_force())
            case SelectRecipe(name=name, number=number):
                return self.select_recipe(name, number)
            case Reload(bundle=bundle):
                return self.reload(bundle)
            case ApplyThresholds(image_threshold=image, pixel_threshold=pixel, review_threshold=review):
                return self.apply_thresholds(image, pixel, review)
            case Status():
                cams = "; ".join(f"{c.camera} {c.state} {c.frames_judged} judged {c.frames_dropped} dropped" for c in self.camera_health())
                recipes = ", ".join(r.name for r in self.recipes)
                return Reply(ok=True, message=f"recipe {self.model.recipe} (of {recipes}); {_describe(self.model.thresholds)}; {cams}", **self._in_force())
        return Reply(ok=False, message=f"unknown request {request!r}")

    def _in_force(self) -> dict:
        m = self.model
        t = m.thresholds
        image, pixel = NAN if t.image is None else t.image, NAN if t.pixel is None else t.pixel
        return dict(model_id=m.bundle.model_id, image_threshold=image, pixel_threshold=pixel, recipe=m.recipe)

    # --- health -----------------------------------------------------------------------------------------
    def camera_health(self) -> list[CameraHealth]:
        now_ns, out = time.time_ns(), []
        for c in self.captures:
            accepted, refused, missed = self.triggers[c.cfg.id].counts(now_ns)
            drift, drift_state = self.worker.drift.state(c.cfg.id)
            out.append(msgspec.structs.replace(
                c.stats.snapshot(), frames_judged=self.worker.judged[c.cfg.id], drift=drift, drift_state=drift_state,
                triggers=accepted, triggers_refused=refused, triggers_missed=missed,
            ))  # fmt: skip
        return out

    def _archive_counts(self) -> dict[str, int]:
        a = getattr(self, "archive", None)  # scraped only after start, when it exists
        if a is None:
            return {}
        return {"written": a.written, "skipped": a.skipped, "failed": a.failed, "deleted": a.deleted, "bytes": a.total_bytes}

    def health(self) -> Health:
        m = self.model
        return Health(
            schema_version=SCHEMA_VERSION, daemon=self.cfg.name, seq=0, time_ns=0, period_s=self.cfg.publish.heartbeat_s,
            uptime_s=round(time.monotonic() - self.started, 3), backend=m.backend.name, model_id=m.bundle.model_id,
            image_threshold=NAN if m.thresholds.image is None else m.thresholds.image, cameras=self.camera_health(),
            recipe=m.recipe, recipes=[r.name for r in self.recipes],
        )

    # --- lifetime ---------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """SIGTERM/SIGINT: drain and exit; a second request gives up the drain."""
        if self.stop_event.is_set():
            self.abort_event.set()
        self.stop_event.set()

    def request_reload(self) -> None:
        self.reload_event.set()

    def run(self) -> int:
        """Start everything, supervise until stopped or all sources ended, drain; returns the exit code."""
        try:
            self.start()
            self._supervise()
        finally:
            self.shutdown()
        return self.exit_code

    def start(self) -> None:
        cfg = self.cfg
        if cfg.metrics.port is not None:
            port = self.metrics.serve(cfg.metrics.port, cfg.metrics.host)
            log.info("metrics on http://%s:%d/metrics", cfg.metrics.host, port)
        for part in (self.publisher, self.control, self.handshakes, self.archive):
            if part is not None:
                part.start()
        self.worker.start()
        m = self.model
        log.info(
            "daemon %s: recipe %s, bundle %s (model %s, %s), thresholds %s; publishing on %s%s",
            cfg.name, m.recipe, self.bundle_path, m.bundle.model_id[:12], m.backend.name, _describe(m.thresholds), ", ".join(self.publisher.endpoints),
            f"; control on {self.control.endpoints[0]}" if self.control else "",
        )
        if m.thresholds.origin.startswith("bundle calibration") and "provisional" in m.bundle.manifest.calibration.method:
            log.warning("the bundle's calibration is provisional (%s): calibrate on site with `ssae calibrate fit` before production", m.bundle.manifest.calibration.source)
        self.sd.ready(f"inspecting {len(self.captures)} camera(s)")  # sockets are bound: subscribers may come
        if cfg.publish.wait_for_subscriber_s > 0:
            self._wait_for_subscriber(cfg.publish.wait_for_subscriber_s)
        if not self.stop_event.is_set():
            for capture in self.captures:
                capture.start()

    def _wait_for_subscriber(self, timeout_s: float) -> None:
        log.info("waiting up to %g s for a subscriber before capturing", timeout_s)
        deadline = time.monotonic() + timeout_s
        while not self.publisher.subscribed.wait(0.05):
            self._ping()
            if self.stop_event.is_set():
                return
            if time.monotonic() > deadline:
                log.warning("no subscriber joined within %g s; capturing anyway", timeout_s)
                return

    def _ping(self) -> None:
        """WATCHDOG=1 when due, and only while the worker makes progress: a hung worker earns no ping."""
        now = time.monotonic()
        if self.sd.watchdog_s is None or now < self.next_ping:
            return
        if now - self.worker.beat < 2 * self.sd.watchdog_s and self.publisher.thread.is_alive():
            self.sd.watchdog()
        self.next_ping = now + self.sd.watchdog_s

    def _supervise(self) -> None:
        while not self.stop_event.wait(0.1):
            if self.reload_event.is_set():
                self.reload_event.clear()
                threading.Thread(name="reload", target=self.reload, kwargs={"reread_config": True}, daemon=True).start()
            if all(c.done for c in self.captures):
                failed = [f"{c.cfg.id} ({c.stats.last_error})" for c in self.captures if c.stats.state == "failed"]
                if failed:
                    log.error("every camera has stopped; failed: %s", "; ".join(failed))
                    self.exit_code = 1
                else:
                    log.info("every source has ended; draining and exiting")
                return
            if not (self.worker.thread.is_alive() and self.publisher.thread.is_alive()):
                log.error("a pipeline thread died; stopping")
                self.exit_code = 1
                return
            self._ping()

    def shutdown(self) -> None:
        """Capture stops, what was captured is judged and published, the publisher flushes; bounded by drain_timeout_s."""
        self.sd.stopping("draining")
        deadline = time.monotonic() + self.cfg.drain_timeout_s

        def remaining() -> float:  # a second SIGTERM (abort) cuts every wait short
            return 0.05 if self.abort_event.is_set() else max(0.05, deadline - time.monotonic())

        for capture in self.captures:
            capture.stop()
        for capture in self.captures:
            if not capture.join(remaining()) or self.abort_event.is_set():
                capture.abort()
        self.worker.stop()
        clean = self.worker.join(remaining())
        if self.archive is not None:
            self.archive.stop()
            clean &= self.archive.join(remaining())
        self.publisher.stop()
        clean &= self.publisher.join(remaining() + self.cfg.publish.linger_ms / 1000)
        if self.control is not None:
            self.control.stop()
            clean &= self.control.join(1.0)
        if self.handshakes is not None:
            self.handshakes.stop()
            clean &= self.handshakes.join(1.0)
        if not clean:
            log.error("drain did not finish within %g s; frames still in flight were lost", self.cfg.drain_timeout_s)
            self.exit_code = self.exit_code or 1
        else:
            for backend in [*self.retired, self.model.backend]:
                backend.close()
        self.metrics.close()
        if self.security is not None:
            self.security.stop()  # after the sockets it authenticates are closed
        if clean:
            self.ctx.term()
        else:
            self.ctx.destroy(linger=0)  # a thread still holds a socket: don't wait for it
        cameras = self.camera_health()
        totals = ", ".join(f"{c.camera}: {c.frames_captured} captured, {c.frames_judged} judged, {c.frames_dropped} dropped" for c in cameras)
        lossy = self.publisher.dropped or any(c.frames_dropped or c.skipped_files or c.state == "failed" for c in cameras)
        log.log(logging.WARNING if lossy else logging.INFO, "stopped (%s; %d messages sent, %d dropped at publish)", totals, self.publisher.sent, self.publisher.dropped)


def serve(cfg: DaemonConfig, config_path: str | Path | None = None, report: Callable[[list[CameraHealth]], None] | None = None) -> int:
    """Run a daemon in the main thread with the signals systemd and a terminal send; returns the exit code.

    SIGTERM / SIGINT: drain and exit (a second one gives up the drain). SIGHUP: reload bundle and thresholds.
    `report` gets the cameras' final counts once the daemon has stopped (quick mode's end summary).
    """
    import signal

    daemon = Daemon(cfg, config_path=config_path)
    handlers = {
        signal.SIGTERM: lambda *_: daemon.request_stop(),
        signal.SIGINT: lambda *_: daemon.request_stop(),
        signal.SIGHUP: lambda *_: daemon.request_reload(),
    }
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        code = daemon.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if report is not None:
        report(daemon.camera_health())
    return code


def backend_options(cfg: DaemonConfig) -> dict:
    """The [gpu] table as the chosen backend's constructor options; for ONNX Runtime, whether its threads spin."""
    gpu = cfg.gpu
    if cfg.backend == "torch-cuda":
        options = dict(device=gpu.device, in_flight=gpu.in_flight, cuda_graphs=gpu.cuda_graphs, precision=gpu.precision)
        if gpu.device == "cpu":
            options["cpu_threads"] = cfg.threads  # torch's own thread pool; on a GPU the CPU only feeds it
        return options
    if cfg.backend == "tensorrt":
        index = int(gpu.device.partition(":")[2] or 0)  # "cuda" is device 0
        return dict(device_index=index, in_flight=gpu.in_flight, fp16=gpu.precision != "fp32")
    return {"spin": cfg.spin}


def _describe(t: Thresholds) -> str:
    if t.image is None:
        return "none (uncalibrated: verdicts are unknown)"
    band = f", review above {t.review:.6g}" if t.review is not None else ""
    return f"image {t.image:.6g}, pixel {t.pixel:.6g}{band} ({t.origin})"
