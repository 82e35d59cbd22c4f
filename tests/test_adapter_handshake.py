"""The Modbus handshake end to end: a real daemon (its cameras, model and control endpoint), the adapter
in its own threads, and a real pymodbus TCP server as the PLC, whose program the test plays with a
Modbus client: part id, trigger, acknowledge, recipe select."""

from __future__ import annotations

import threading
import time

import msgspec
import pytest
import zmq
from pymodbus.client import ModbusTcpClient

from edge.adapter.config import AdapterConfig
from edge.adapter.handshake import ERRORS, decode_part_id, encode_part_id
from edge.adapter.modbus import run_modbus_adapter
from edge.daemon.config import config_from_dict
from edge.daemon.daemon import Daemon
from edge.wire import FrameHeader
from test_adapter_modbus import PlcSim, free_port, wait_for
from test_edge_daemon import noise, write_images
from test_edge_recipes import corrupt, variant

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

REJECT, UNAVAILABLE, ALIVE, C, R = 10, 11, 12, 20, 30  # coils; C: handshake coils; R: handshake registers
TRIGGER, ACK, READY, RESULTS, MISSED, OVERRUN = (C + i for i in range(6))
RECIPE, PART = R, R + 1
VERSION, ERROR, ACTIVE, VERDICT, SCORE, RESULT_RECIPE, COUNT, TRIGGERS, REFUSED, MISSES, OVERRUNS = (R + 10 + i for i in range(11))
RESULT_PART = R + 21


class Rig:
    """Daemon + PLC + adapter, started in that order of need; stopped at teardown."""

    def __init__(self, tmp_path, tiny_bundle, *, pace_fps: float, **handshake):
        folder = write_images(tmp_path / "imgs", {f"{i}.png": noise((32, 32, 3), i) for i in range(3)})
        recipes = [
            {"name": "a", "bundle": str(tiny_bundle), "image_threshold": 0.0},  # every frame a defect
            {"name": "b", "bundle": str(variant(tiny_bundle, tmp_path / "b", "b")), "image_threshold": 1e6},  # every frame ok
            {"name": "c", "bundle": str(corrupt(tiny_bundle, tmp_path / "c"))},
        ]
        raw = {"cameras": [{"id": "cam", "source": str(folder), "loop": True, "pace_fps": pace_fps}], "recipes": recipes, "threads": 1, "name": "line1",
               "control": {"endpoint": "tcp://127.0.0.1:*"}, "publish": {"endpoints": ["tcp://127.0.0.1:*"], "heartbeat_s": 0.2}}  # fmt: skip
        self.daemon = Daemon(config_from_dict(raw, origin="test"))
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)  # the test's own view of the stream
        self.sub.linger = 0
        self.sub.subscribe(b"frame.")
        self.sub.connect(self.daemon.publisher.endpoints[0])
        self.daemon_thread = threading.Thread(target=self.daemon.run, name="test-daemon", daemon=True)
        self.daemon_thread.start()
        self.plc = PlcSim(free_port(), size=64)
        self.plc.start()
        self.client = ModbusTcpClient("127.0.0.1", port=self.plc.port, timeout=1)
        assert self.client.connect()
        cfg = msgspec.convert({
            "daemon": {"endpoint": self.daemon.publisher.endpoints[0], "control": self.daemon.control.endpoints[0], "cameras": ["cam"], "first_heartbeat_s": 5.0},
            "plc": {"host": "127.0.0.1", "port": self.plc.port, "timeout_s": 0.5, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2},
            "reject": {"coil": REJECT, "pulse_ms": 50},
            "outputs": {"unavailable_coil": UNAVAILABLE, "alive_coil": ALIVE},
            "handshake": {"camera": "cam", "coils": C, "registers": R, "poll_ms": 5, **handshake},
        }, AdapterConfig)  # fmt: skip
        self.stop = threading.Event()
        self.adapter = threading.Thread(target=run_modbus_adapter, args=(cfg, self.stop), name="adapter-under-test", daemon=True)
        self.adapter.start()
        wait_for(lambda: self.coil(UNAVAILABLE) == 0 and self.coil(READY) == 1, 15, "inspection available, trigger ready")

    def coil(self, address: int) -> int | None:
        return self.plc.value("coil", address)

    def reg(self, address: int) -> int | None:
        return self.plc.value("reg", address)

    def write(self, kind: str, address: int, value: int) -> None:
        """The PLC program sets one of its own inputs to the adapter."""
        reply = self.client.write_coil(address, bool(value), device_id=1) if kind == "coil" else self.client.write_register(address, value, device_id=1)
        assert not reply.isError()

    def pulse_trigger(self, part_words: list[int] | None = None) -> None:
        if part_words is not None:
            for i, w in enumerate(part_words):
                self.write("reg", PART + i, w)
        self.write("coil", TRIGGER, 0)
        time.sleep(0.03)  # > poll_ms: the adapter sees the low level, so the next write is a rising edge
        self.write("coil", TRIGGER, 1)

    def acknowledge(self) -> None:
        self.write("coil", ACK, 1)
        wait_for(lambda: self.coil(RESULTS) == 0, 5, "results_ready released by the ack")
        self.write("coil", ACK, 0)

    def frames(self, timeout_s: float = 0.0) -> list[FrameHeader]:
        out = []
        while self.sub.poll(int(timeout_s * 1000)):
            out.append(msgspec.msgpack.decode(self.sub.recv_multipart()[1], type=FrameHeader))
            timeout_s = 0
        return out

    def close(self) -> None:
        self.stop.set()
        self.adapter.join(5)
        assert not self.adapter.is_alive(), "adapter did not stop"
        self.daemon.request_stop()
        self.daemon_thread.join(10)
        self.client.close()
        self.plc.stop()
        self.sub.close()
        self.ctx.term()


@pytest.fixture
def rig(tmp_path, tiny_bundle):
    rigs = []

    def make(**kw) -> Rig:
        rigs.append(Rig(tmp_path, tiny_bundle, **kw))
        return rigs[-1]

    yield make
    for r in rigs:
        r.close()


def test_trigger_result_held_until_acknowledged_busy_refused_and_an_ack_that_never_comes(rig):
    line = rig(pace_fps=20, ack_timeout_ms=400)
    plc = line.plc
    wait_for(lambda: line.reg(ACTIVE) == 1, 5, "the active recipe from the heartbeat")
    assert line.reg(VERSION) == 1 and line.reg(VERDICT) == 0
    time.sleep(0.3)
    assert plc.pulses() == [], "untriggered frames of the handshake camera are no parts: no reject"
    line.pulse_trigger([0x0001, 0x0002])  # part id 65538
    wait_for(lambda: line.coil(RESULTS) == 1, 5, "results ready")
    assert line.coil(READY) == 0, "no trigger ready while the result waits for its ack"
    assert [line.reg(RESULT_PART + i) for i in range(2)] == [1, 2] and line.reg(VERDICT) == 2 and line.reg(RESULT_RECIPE) == 1
    assert (line.reg(COUNT), line.reg(TRIGGERS), line.reg(ERROR)) == (1, 1, ERRORS["none"])
    t_result = plc.history("coil", RESULTS)[-1][0]
    assert all(t <= t_result for t, _ in plc.history("reg", RESULT_PART)), "the result registers were written before results_ready"
    wait_for(lambda: len(plc.pulses()) == 1, 5, "the triggered defect fires one reject pulse")
    # A trigger while the result waits for its ack: refused and counted, nothing overwritten.
    line.pulse_trigger([0, 99])
    wait_for(lambda: line.reg(REFUSED) == 1, 5, "the busy trigger counted")
    assert line.reg(ERROR) == ERRORS["busy"] and line.reg(COUNT) == 1 and line.reg(RESULT_PART + 1) == 2 and line.coil(RESULTS) == 1
    # The ack does not come within ack_timeout_ms: buffer overrun, and the result stays held.
    wait_for(lambda: line.coil(OVERRUN) == 1, 5, "buffer overrun")
    assert line.reg(ERROR) == ERRORS["buffer_overrun"] and line.reg(OVERRUNS) == 1 and line.coil(RESULTS) == 1
    line.acknowledge()
    wait_for(lambda: line.coil(READY) == 1, 5, "trigger ready again")
    # The next accepted trigger clears the overrun bit and the error code.
    line.pulse_trigger([0, 7])
    wait_for(lambda: line.reg(COUNT) == 2 and line.coil(RESULTS) == 1, 5, "second result")
    assert line.coil(OVERRUN) == 0 and line.reg(ERROR) == 0 and line.reg(RESULT_PART + 1) == 7
    line.acknowledge()
    wait_for(lambda: len(plc.pulses()) == 2, 5, "the second triggered defect's pulse")
    assert [f.part_id for f in line.frames(0.5) if f.trigger_id] == ["65538", "7"], "the daemon answered exactly the two accepted triggers"


def test_missed_acquisition_and_recipe_selected_by_the_plc(rig):
    line = rig(pace_fps=4, acquire_timeout_ms=40, result_timeout_ms=300)
    # The PLC selects recipe 2: the daemon switches between frames; the active recipe register follows.
    line.write("reg", RECIPE, 2)
    wait_for(lambda: line.reg(ACTIVE) == 2, 10, "recipe 2 active")
    wait_for(lambda: any(f.recipe == "b" for f in line.frames(0.5)), 5, "frames judged by recipe b")
    # Recipe 3's bundle is corrupt: refused, error 7, the running one stays; 9 does not exist.
    line.write("reg", RECIPE, 3)
    wait_for(lambda: line.reg(ERROR) == ERRORS["recipe_refused"], 10, "recipe 3 refused")
    line.write("reg", RECIPE, 0)
    time.sleep(0.5)
    assert line.reg(ACTIVE) == 2 and all(f.recipe == "b" for f in line.frames(0.5))
    # A trigger just after a frame: the next frame is 250 ms away, beyond acquire_timeout_ms.
    line.frames(0)
    line.frames(2.0)
    line.pulse_trigger([0, 5])
    wait_for(lambda: line.coil(MISSED) == 1, 5, "missed acquisition")
    assert line.reg(ERROR) == ERRORS["missed_acquisition"] and line.reg(MISSES) == 1 and line.reg(TRIGGERS) == 1 and line.reg(COUNT) == 0
    wait_for(lambda: line.coil(READY) == 1, 5, "trigger ready after the miss")
    assert line.coil(RESULTS) in (None, 0)
    cams = line.daemon.camera_health()
    assert cams[0].triggers == 1 and cams[0].triggers_missed == 1


@pytest.mark.parametrize("fmt, text, words", [("uint", "65538", [1, 2]), ("ascii", "AB-7", [0x4142, 0x2D37, 0])])
def test_part_id_registers(fmt, text, words):
    assert decode_part_id(words, fmt) == text and encode_part_id(text, len(words), fmt) == words


BASE = """[daemon]
endpoint = "tcp://127.0.0.1:5555"
cameras = ["cam1"]
{control}
[plc]
host = "127.0.0.1"
[reject]
coil = 0
[outputs]
unavailable_coil = 1
alive_coil = 2
status_register = 40
[handshake]
camera = "{camera}"
coils = {coils}
registers = 20
"""


@pytest.mark.parametrize(
    "control, camera, coils, expect",
    [
        ("", "cam1", 10, "[handshake] needs daemon.control"),
        ('control = "tcp://127.0.0.1:5556"', "cam2", 10, "handshake.camera = 'cam2' is not in daemon.cameras"),
        ('control = "tcp://127.0.0.1:5556"', "cam1", 0, "handshake.coils and reject.coil are both coil 0"),
        ('control = "127.0.0.1:5556"', "cam1", 10, "daemon.control = '127.0.0.1:5556' is not a ZeroMQ endpoint"),
    ],
)
def test_handshake_config_errors_name_the_field_and_the_fix(tmp_path, control, camera, coils, expect):
    from edge.adapter.config import load_adapter_config
    from edge.errors import UserError

    path = tmp_path / "modbus.toml"
    path.write_text(BASE.format(control=control, camera=camera, coils=coils))
    with pytest.raises(UserError) as e:
        load_adapter_config(path)
    assert expect in str(e.value), str(e.value)
    path.write_text(BASE.format(control='control = "tcp://127.0.0.1:5556"', camera="cam1", coils=10).replace("registers = 20", "registers = 30"))
    with pytest.raises(UserError, match="handshake.registers\\+10 and outputs.status_register are both holding register 40"):
        load_adapter_config(path)


def test_the_example_handshake_loads_once_uncommented(tmp_path):
    from pathlib import Path

    from edge.adapter.config import load_adapter_config

    text = (Path(__file__).resolve().parent.parent / "configs" / "adapter" / "modbus.toml").read_text()
    block = text[text.index("# [handshake]") :]
    live = text.replace("# control = ", "control = ").replace(block, "\n".join(line[2:] for line in block.splitlines()))
    path = tmp_path / "modbus.toml"
    path.write_text(live)
    cfg = load_adapter_config(path)
    assert cfg.handshake is not None and cfg.handshake.camera in cfg.daemon.cameras and cfg.daemon.control


def test_edges_not_levels_and_recipe_wishes():
    """A coil already high when the adapter (re)connects is no trigger; recipe_select acts on changes, 0 then n again."""
    from edge.adapter.handshake import ControlAnswer, Handshake, HandshakeConfig, Inputs
    from edge.wire import Reply, SelectRecipe, Trigger

    sent = []
    hs = Handshake(HandshakeConfig(camera="cam", coils=0, registers=10), lambda v: 0, lambda kind, r: sent.append(r) or True)
    hs.on_inputs(Inputs(True, False, 2, [0, 1]), 0.0, True)
    assert sent == [SelectRecipe(number=2)] and hs.phase == "idle"  # the trigger level at start is a baseline
    hs.on_inputs(Inputs(True, False, 2, [0, 1]), 0.01, True)
    hs.on_inputs(Inputs(False, False, 0, [0, 1]), 0.02, True)
    hs.on_inputs(Inputs(True, False, 2, [0, 1]), 0.03, True)
    assert sent[1:] == [SelectRecipe(number=2), Trigger(camera="cam", part_id="1", timeout_ms=500.0)] and hs.phase == "requesting"
    hs.on_answer(ControlAnswer("trigger", sent[-1], Reply(ok=True, trigger_id=4)), 0.04)
    hs.on_result(FrameHeader(schema_version=2, camera="cam", seq=9, capture_ns=1, publish_ns=2, score=0.1, threshold=0.5, verdict="ok", model_id="m", part_id="1", trigger_id=4), 0.05)
    assert hs.phase == "holding" and hs.desired(True)[("coil", 3)] == 1  # results_ready
    hs.reconnected()
    hs.on_inputs(Inputs(False, True, 2, [0, 1]), 0.06, True)  # an ack already high at reconnect acknowledges nothing
    hs.on_inputs(Inputs(False, True, 2, [0, 1]), 0.07, True)
    assert hs.phase == "holding"
    hs.on_inputs(Inputs(False, False, 2, [0, 1]), 0.08, True)
    hs.on_inputs(Inputs(False, True, 2, [0, 1]), 0.09, True)
    assert hs.phase == "idle" and len(sent) == 3
