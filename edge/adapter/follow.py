"""What the state-publishing adapters (OPC UA, MQTT) know about the inspector: one view fed by the stream.

The Modbus adapter turns the stream into coils; the OPC UA server and the MQTT bridge publish the same
facts as values, so both build on this view instead of deciding twice what "down" means:

- per camera: the last result (its FrameHeader, passed through as received: its verdict may be "review",
  a part in the calibration's uncertain band, which the line decides about), counters (frames received,
  defects, and from the subscriber's Tally the frames lost on the way and dropped by the daemon), and a state;
- for the inspector: the worst camera state, the daemon's name, model id and recipe.

States, in the spirit of OPC 40100's vision state machine (worst first):

    unavailable  no heartbeat within missed_heartbeats x period (or none yet since start, or the adapter
                 is stopping): nothing the adapter shows can be trusted
    error        heartbeats arrive, but the camera is not "streaming" (reconnecting, failed, finished,
                 starting, not reported), or frames were lost on the way less than recover_after_s ago
                 (with on_dropped = "error": or dropped by the daemon)
    busy         streaming, and a frame of it arrived less than idle_after_s ago: inspecting
    ready        streaming, no frame for idle_after_s: idle, waiting for parts

The view is owned by one thread (the adapter's loop); it never touches a socket.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from edge.adapter.config import ENDPOINT_RE
from edge.client.subscriber import BadMessage, FrameEvent, HealthEvent, HeartbeatLost, Subscriber, Tally
from edge.errors import UserError
from edge.security import ClientSecurityConfig, client_secure
from edge.strict import Strict
from edge.wire import CameraHealth, FrameHeader, Health

State = Literal["ready", "busy", "error", "unavailable"]
SEVERITY: dict[str, int] = {"ready": 0, "busy": 1, "error": 2, "unavailable": 3}  # the inspector shows the worst
CameraId = Annotated[str, Meta(pattern=r"^[a-z0-9_-]+$")]  # the daemon's camera ids, as in frame.<camera>


class FollowConfig(Strict, kw_only=True):
    """`[daemon]` of the OPC UA and MQTT adapters: which daemon to follow and when its stream is trusted."""

    endpoint: str  # the daemon's publish endpoint, e.g. tcp://10.0.0.5:5555
    cameras: list[CameraId] = []  # cameras to publish; empty = every camera the daemon reports
    missed_heartbeats: Annotated[int, Meta(ge=1, le=100)] = 3  # silence of this many heartbeat periods = unavailable
    first_heartbeat_s: Annotated[float, Meta(gt=0, le=3600)] = 10.0  # after start, when to log the daemon as never heard
    recover_after_s: Annotated[float, Meta(ge=0, le=3600)] = 2.0  # after frames lost on the way, "error" this long
    idle_after_s: Annotated[float, Meta(gt=0, le=3600)] = 2.0  # streaming but no frame this long: "ready", not "busy"
    on_dropped: Literal["ignore", "error"] = "ignore"  # frames the daemon dropped (header.dropped): "error" on triggered lines
    security: ClientSecurityConfig = ClientSecurityConfig()  # the same [daemon.security] as the Modbus adapter
    control: str = ""  # the daemon's control endpoint ([control].endpoint): OPC UA's SelectRecipe method calls it

    def __post_init__(self) -> None:
        if not ENDPOINT_RE.match(self.endpoint):
            raise ValueError(f"daemon.endpoint = {self.endpoint!r} is not a ZeroMQ endpoint; write it like tcp://127.0.0.1:5555")
        if self.control and not ENDPOINT_RE.match(self.control):
            raise ValueError(f"daemon.control = {self.control!r} is not a ZeroMQ endpoint; write it like tcp://127.0.0.1:5556")


def open_subscriber(cfg: FollowConfig) -> Subscriber:
    """The SUB socket for `cfg` (CURVE when configured); masks are skipped without a copy."""
    try:
        return Subscriber(
            cfg.endpoint,
            cameras=cfg.cameras or None,
            masks=False,
            missed_heartbeats=cfg.missed_heartbeats,
            first_heartbeat_s=cfg.first_heartbeat_s,
            configure=client_secure(cfg.security),
        )
    except ValueError as e:  # a malformed endpoint: the message says which and how to write it
        raise UserError(f"daemon.endpoint: {e}") from None


class CameraView(msgspec.Struct, frozen=True, kw_only=True):
    """One camera as the adapters publish it (a snapshot)."""

    camera: str
    state: State
    reason: str  # why not "ready"/"busy"; "" otherwise
    frames: int  # frames received from the daemon
    defects: int  # of those, verdict "defect"
    lost: int  # published by the daemon, never received (the subscriber's Tally)
    dropped: int  # dropped by the daemon itself (sum of header.dropped)
    last: FrameHeader | None  # the latest result; None before the first frame
    stale: bool  # `last` stopped updating: no heartbeats, or the camera is not streaming


class InspectorView(msgspec.Struct, frozen=True, kw_only=True):
    """The inspector as a whole (a snapshot): the worst camera state, and what the heartbeats say."""

    state: State
    reason: str
    daemon: str  # from the heartbeats; "" before the first one
    model_id: str
    recipe: str  # the active recipe (the heartbeat's, else the latest frame's); "" before either
    heartbeat_ns: int  # wall clock of the latest heartbeat's receipt; 0 = none yet
    heartbeats_missed: int  # gaps in the heartbeat sequence, since start
    cameras: list[CameraView]


class _Camera:
    __slots__ = ("defects", "last", "last_frame_s", "error_until_s", "error_reason")

    def __init__(self) -> None:
        self.defects = 0
        self.last: FrameHeader | None = None
        self.last_frame_s = float("-inf")
        self.error_until_s = float("-inf")
        self.error_reason = ""


class Inspector:
    """Folds subscriber events into the view (one thread). Call `on_event` per event, `view(now, tally)` to publish."""

    def __init__(self, cfg: FollowConfig) -> None:
        self.cfg = cfg
        self._cameras: dict[str, _Camera] = {name: _Camera() for name in cfg.cameras}
        self._health: Health | None = None
        self._heartbeat_ok = False  # nothing heard yet: unavailable until proven otherwise
        self._heartbeat_ns = 0
        self._lost_reason = "waiting for the first heartbeat"
        self._stopping = False

    def on_event(self, ev: FrameEvent | HealthEvent | HeartbeatLost | BadMessage | None, now_s: float) -> None:
        match ev:
            case FrameEvent(header=h):
                cam = self._camera(h.camera)
                cam.last, cam.last_frame_s = h, now_s
                cam.defects += h.verdict == "defect"
                if ev.lost:
                    cam.error_until_s = now_s + self.cfg.recover_after_s
                    cam.error_reason = f"{ev.lost} frame(s) lost on the way before seq {h.seq}"
                elif h.dropped and self.cfg.on_dropped == "error":
                    cam.error_until_s = now_s + self.cfg.recover_after_s
                    cam.error_reason = f"the daemon dropped {h.dropped} frame(s) before seq {h.seq}"
            case HealthEvent(health=health):
                self._health, self._heartbeat_ok, self._heartbeat_ns = health, True, ev.received_ns
                for c in health.cameras:
                    if not self.cfg.cameras:
                        self._camera(c.camera)
            case HeartbeatLost(daemon=daemon, silent_s=silent_s):
                self._heartbeat_ok = False
                self._lost_reason = f"no heartbeat from {daemon or 'the daemon'} for {silent_s:.1f} s"

    @property
    def daemon(self) -> str:
        """The daemon's name from its heartbeats; "" before the first one."""
        return self._health.daemon if self._health else ""

    def stopping(self) -> None:
        """The adapter is about to stop: everything it still shows is unavailable."""
        self._stopping = True

    def _camera(self, name: str) -> _Camera:
        cam = self._cameras.get(name)
        if cam is None:
            cam = self._cameras[name] = _Camera()
        return cam

    def _state(self, cam: _Camera, reported: CameraHealth | None, now_s: float) -> tuple[State, str, bool]:
        """(state, reason, stale) of one camera."""
        if self._stopping:
            return "unavailable", "adapter stopping", True
        if not self._heartbeat_ok or self._health is None:
            return "unavailable", self._lost_reason, True
        if reported is None:
            return "error", "camera not reported by the daemon", True
        if reported.state != "streaming":
            detail = f": {reported.last_error}" if reported.last_error else ""
            return "error", f"camera {reported.state}{detail}", True
        if now_s < cam.error_until_s:
            return "error", cam.error_reason, False  # the result itself is fresh; frames before it went missing
        return ("busy" if now_s - cam.last_frame_s < self.cfg.idle_after_s else "ready"), "", False

    def view(self, now_s: float, tally: Tally) -> InspectorView:
        counts = {c.camera: c for c in tally.cameras}
        reported = {c.camera: c for c in self._health.cameras} if self._health else {}
        cameras = []
        for name, cam in sorted(self._cameras.items()):
            state, reason, stale = self._state(cam, reported.get(name), now_s)
            t = counts.get(name)
            cameras.append(
                CameraView(
                    camera=name, state=state, reason=reason, defects=cam.defects, last=cam.last, stale=stale,
                    frames=t.frames if t else 0, lost=t.lost if t else 0, dropped=t.dropped if t else 0,
                )
            )  # fmt: skip
        state, reason, _ = self._state(_Camera(), None, now_s)
        if state != "unavailable":  # not the whole inspector down: the worst camera speaks for it
            worst = max(cameras, key=lambda c: SEVERITY[c.state], default=None)
            if worst is None:  # no camera configured and none reported
                state, reason = "error", "the daemon reports no cameras"
            else:
                state, reason = worst.state, f"{worst.camera}: {worst.reason}" if worst.reason else ""
        h = self._health
        return InspectorView(
            state=state,
            reason=reason,
            daemon=h.daemon if h else "",
            model_id=h.model_id if h else "",
            recipe=_recipe(h, cameras),
            heartbeat_ns=self._heartbeat_ns,
            heartbeats_missed=tally.heartbeats_missed,
            cameras=cameras,
        )


def _recipe(health: Health | None, cameras: list[CameraView]) -> str:
    """The active recipe: the heartbeat's, else (a schema 1 daemon sends none) the latest frame's."""
    if health is not None and health.recipe:
        return health.recipe
    latest = max((c.last for c in cameras if c.last is not None), key=lambda h: h.publish_ns, default=None)
    return latest.recipe if latest is not None else ""


def part_id(header: FrameHeader) -> str:
    """The part id the header carries: the PLC's, on a triggered frame; "" on a free-running one."""
    return header.part_id
