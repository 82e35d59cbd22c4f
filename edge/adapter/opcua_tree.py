"""The OPC UA adapter's node tree: built once (cameras added when first seen), written from the view.

Every node has a string NodeId in the adapter's namespace, so an integrator can configure a PLC or SCADA
tag by id (`ns=<index of namespace_uri>;s=Inspector.Cameras.cam1.Result.Score`) as well as by browse path
(Objects/Inspector/Cameras/cam1/Result/Score). All variables are read-only.

    Inspector                       State, StateReason, Daemon, ModelId, Recipe, LastHeartbeat, HeartbeatsMissed
      Cameras
        <camera>                    State, StateReason
          Result                    Verdict, Score, Threshold, PartId, Seq, CaptureTime, ModelId, Regions,
                                    RegionCount, Reason
          Counters                  Frames, Defects, Lost, Dropped

With the daemon's control endpoint configured, Inspector also has the method SelectRecipe(Recipe: String)
-> (Ok: Boolean, Message: String), which asks the daemon to switch (edge/adapter/opcua.py decides who may).

Result values carry the frame's capture time as their SourceTimestamp. Before the first frame their status
is BadWaitingForInitialData; while it no longer updates (heartbeats lost, camera not streaming) it is
UncertainLastUsableValue, so a client that shows quality flags a stale result without reading State.
"""

from __future__ import annotations

import datetime as dt
import math

import msgspec
from asyncua import Server, ua

from edge.adapter.follow import CameraView, InspectorView, part_id

V = ua.VariantType
NEVER = dt.datetime(1601, 1, 1, tzinfo=dt.timezone.utc)  # OPC UA's null DateTime
GOOD, STALE, NO_DATA = ua.StatusCodes.Good, ua.StatusCodes.UncertainLastUsableValue, ua.StatusCodes.BadWaitingForInitialData

# name: (type, initial value). The order is the browse order clients show.
INSPECTOR_VARS = {
    "State": (V.String, "unavailable"),  # ready | busy | error | unavailable: the worst of the cameras
    "StateReason": (V.String, "adapter starting"),
    "Daemon": (V.String, ""),
    "ModelId": (V.String, ""),
    "Recipe": (V.String, ""),  # the active recipe (the heartbeat's)
    "LastHeartbeat": (V.DateTime, NEVER),
    "HeartbeatsMissed": (V.UInt64, 0),
}
CAMERA_VARS = {"State": (V.String, "unavailable"), "StateReason": (V.String, "adapter starting")}
RESULT_VARS = {
    "Verdict": (V.String, ""),  # ok | defect | review | unknown
    "Score": (V.Double, math.nan),
    "Threshold": (V.Double, math.nan),
    "PartId": (V.String, ""),  # the PLC's part id of a triggered frame; "" for a free-running one
    "Seq": (V.UInt64, 0),
    "CaptureTime": (V.DateTime, NEVER),
    "ModelId": (V.String, ""),
    "Regions": (V.String, "[]"),  # JSON array of {x, y, w, h, area_px, peak_score}, mask pixel coordinates
    "RegionCount": (V.UInt32, 0),
    "Reason": (V.String, ""),  # why "unknown"
}
COUNTER_VARS = {"Frames": (V.UInt64, 0), "Defects": (V.UInt64, 0), "Lost": (V.UInt64, 0), "Dropped": (V.UInt64, 0)}

_json = msgspec.json.Encoder()


class InspectorTree:
    """Owns the inspector's nodes in one server; writes only values that changed (one event-loop thread)."""

    def __init__(self, server: Server, ns: int) -> None:
        self.server, self.ns = server, ns
        self._types: dict[str, ua.VariantType] = {}  # string node id -> variant type
        self._written: dict[str, tuple[object, int]] = {}  # string node id -> (value, status) last written
        self._cameras: set[str] = set()
        self._root: object = None
        self._cameras_folder: object = None

    async def build(self, cameras: list[str]) -> None:
        objects = self.server.nodes.objects
        self._root = await objects.add_object(self._id("Inspector"), ua.QualifiedName("Inspector", self.ns))
        await self._add_vars(self._root, "Inspector", INSPECTOR_VARS)
        self._cameras_folder = await self._root.add_folder(self._id("Inspector.Cameras"), ua.QualifiedName("Cameras", self.ns))
        for name in cameras:
            await self._add_camera(name)

    async def add_select_recipe(self, call) -> ua.NodeId:
        """Inspector.SelectRecipe; `call(name) -> (ok, message)` runs in asyncua's executor (it may block)."""
        text = ua.NodeId(ua.ObjectIds.String)
        inputs = [ua.Argument(Name="Recipe", DataType=text, ValueRank=-1, Description=ua.LocalizedText("a recipe of the daemon's config"))]
        outputs = [ua.Argument(Name="Ok", DataType=ua.NodeId(ua.ObjectIds.Boolean), ValueRank=-1), ua.Argument(Name="Message", DataType=text, ValueRank=-1)]

        def method(parent, name: ua.Variant) -> list[ua.Variant]:
            ok, message = call(str(name.Value or ""))
            return [ua.Variant(ok, V.Boolean), ua.Variant(message, V.String)]

        node = await self._root.add_method(self._id("Inspector.SelectRecipe"), ua.QualifiedName("SelectRecipe", self.ns), method, inputs, outputs)
        return node.nodeid

    async def write(self, view: InspectorView) -> None:
        """Bring every node to `view`, in one pass without yielding to clients in between (see _put)."""
        now = dt.datetime.now(dt.timezone.utc)
        p = "Inspector"
        await self._put(f"{p}.State", view.state, now)
        await self._put(f"{p}.StateReason", view.reason, now)
        await self._put(f"{p}.Daemon", view.daemon, now)
        await self._put(f"{p}.ModelId", view.model_id, now)
        await self._put(f"{p}.Recipe", view.recipe, now)
        heartbeat = _utc(view.heartbeat_ns) if view.heartbeat_ns else NEVER
        await self._put(f"{p}.LastHeartbeat", heartbeat, now)
        await self._put(f"{p}.HeartbeatsMissed", view.heartbeats_missed, now)
        for cam in view.cameras:
            if cam.camera not in self._cameras:
                await self._add_camera(cam.camera)
            await self._write_camera(cam, now)

    async def _write_camera(self, cam: CameraView, now: dt.datetime) -> None:
        p = f"Inspector.Cameras.{cam.camera}"
        await self._put(f"{p}.State", cam.state, now)
        await self._put(f"{p}.StateReason", cam.reason, now)
        for name, value in (("Frames", cam.frames), ("Defects", cam.defects), ("Lost", cam.lost), ("Dropped", cam.dropped)):
            await self._put(f"{p}.Counters.{name}", value, now)
        h = cam.last
        if h is None:
            return  # results stay BadWaitingForInitialData
        status = STALE if cam.stale else GOOD
        captured = _utc(h.capture_ns)
        values = {
            "Verdict": h.verdict,
            "Score": h.score,
            "Threshold": h.threshold,
            "PartId": part_id(h),
            "Seq": h.seq,
            "CaptureTime": captured,
            "ModelId": h.model_id,
            "Regions": _json.encode(h.regions).decode(),
            "RegionCount": len(h.regions),
            "Reason": h.reason,
        }
        for name, value in values.items():
            await self._put(f"{p}.Result.{name}", value, now, status=status, source=captured)

    async def _add_camera(self, name: str) -> None:
        p = f"Inspector.Cameras.{name}"
        node = await self._cameras_folder.add_object(self._id(p), ua.QualifiedName(name, self.ns))
        await self._add_vars(node, p, CAMERA_VARS)
        result = await node.add_object(self._id(f"{p}.Result"), ua.QualifiedName("Result", self.ns))
        await self._add_vars(result, f"{p}.Result", RESULT_VARS)
        for var in RESULT_VARS:  # no frame yet: say so rather than show a made-up value
            nodeid = self._id(f"{p}.Result.{var}")
            await self.server.write_attribute_value(nodeid, ua.DataValue(StatusCode=ua.StatusCode(NO_DATA)))
            self._written[f"{p}.Result.{var}"] = (None, NO_DATA)
        counters = await node.add_object(self._id(f"{p}.Counters"), ua.QualifiedName("Counters", self.ns))
        await self._add_vars(counters, f"{p}.Counters", COUNTER_VARS)
        self._cameras.add(name)

    async def _add_vars(self, parent, prefix: str, spec: dict[str, tuple[ua.VariantType, object]]) -> None:
        for name, (vtype, initial) in spec.items():
            sid = f"{prefix}.{name}"
            await parent.add_variable(self._id(sid), ua.QualifiedName(name, self.ns), initial, varianttype=vtype)
            self._types[sid] = vtype
            self._written[sid] = (initial, GOOD)

    async def _put(self, sid: str, value: object, now: dt.datetime, *, status: int = GOOD, source: dt.datetime | None = None) -> None:
        # The server's own write: no network, and it suspends only if a subscription's callback does, so a
        # client's Read never sees half of one frame's Result.
        if self._written.get(sid) == (value, status):
            return
        dv = ua.DataValue(ua.Variant(value, self._types[sid]), StatusCode=ua.StatusCode(status), SourceTimestamp=source or now, ServerTimestamp=now)
        await self.server.write_attribute_value(self._id(sid), dv)
        self._written[sid] = (value, status)

    def _id(self, sid: str) -> ua.NodeId:
        return ua.NodeId(sid, self.ns)


def _utc(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc)
