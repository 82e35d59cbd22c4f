"""The Modbus adapter end to end: a real ZeroMQ PUB sending real wire messages, a real pymodbus TCP
server as the PLC on loopback, and the adapter in between (its own threads, as in production)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import msgspec
import pytest
import zmq
from pymodbus.client import ModbusTcpClient
from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
from pymodbus.server import ModbusTcpServer

from edge import wire
from edge.adapter.config import AdapterConfig
from edge.adapter.modbus import run_modbus_adapter
from edge.adapter.plc_link import STATUS_BITS

# A crash in the adapter's own threads must fail the test, not pass as a warning.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

REJECT, UNAVAILABLE, ALIVE = 10, 11, 12  # coils
SCORE, THRESHOLD, TOTAL, WINDOW, STATUS, ENCODER = 0, 1, 2, 3, 4, 20  # holding registers
PERIOD_S = 0.1  # heartbeat period: 3 missed = 0.3 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout_s=5.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class PlcSim:
    """A real pymodbus TCP server in its own asyncio thread; records every write with its time."""

    def __init__(self, port: int, size: int = 32):
        self.port, self.size = port, size
        self.writes: list[tuple[float, str, int, int]] = []  # (monotonic, "coil"/"reg", address, value)
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._serve(ready)), name="plc-sim", daemon=True)
        self.thread.start()
        assert ready.wait(5), "modbus server did not start"

    async def _serve(self, ready: threading.Event) -> None:
        device = ModbusDeviceContext(co=ModbusSequentialDataBlock(1, [False] * self.size), hr=ModbusSequentialDataBlock(1, [0] * self.size))
        self.server = ModbusTcpServer(ModbusServerContext(devices={1: device}, single=False), address=("127.0.0.1", self.port), trace_pdu=self._trace)
        self.loop = asyncio.get_running_loop()
        await self.server.serve_forever(background=True)
        ready.set()
        await self.server.serving

    def _trace(self, sending: bool, pdu):
        name = type(pdu).__name__
        if not sending and name in ("WriteSingleCoilRequest", "WriteSingleRegisterRequest"):
            kind = "coil" if "Coil" in name else "reg"
            value = int(pdu.bits[0]) if kind == "coil" else pdu.registers[0]
            with self.lock:
                self.writes.append((time.monotonic(), kind, pdu.address, value))
        return pdu

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(5)
        self.thread.join(5)

    def history(self, kind: str, address: int) -> list[tuple[float, int]]:
        with self.lock:
            return [(t, v) for t, k, a, v in self.writes if k == kind and a == address]

    def value(self, kind: str, address: int) -> int | None:
        h = self.history(kind, address)
        return h[-1][1] if h else None

    def pulses(self, address: int = REJECT) -> list[float]:
        """Durations (s) of completed on-off pulses of a coil."""
        out, on_at = [], None
        for t, v in self.history("coil", address):
            if v and on_at is None:
                on_at = t
            elif not v and on_at is not None:
                out.append(t - on_at)
                on_at = None
        return out


class Daemon:
    """Stands in for the edge daemon on the wire: a real PUB socket sending wire structs."""

    def __init__(self, ctx: zmq.Context, secure=None):
        self.sock = ctx.socket(zmq.PUB)
        self.sock.linger = 0
        if secure is not None:
            secure(self.sock)  # e.g. CURVE server options, before bind
        self.endpoint = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        self.encoder = msgspec.msgpack.Encoder()
        self.lock = threading.Lock()  # heartbeat thread and test thread share the socket: serialise
        self.health_seq = 0
        self.frame_seq = 0
        self.camera_state = "streaming"
        self.beating = threading.Event()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="fake-daemon-heartbeat", daemon=True)

    def _send(self, topic: bytes, body: msgspec.Struct, *extra: bytes) -> None:
        with self.lock:
            self.sock.send_multipart([topic, self.encoder.encode(body), *extra])

    def heartbeat(self) -> None:
        h = wire.Health(
            schema_version=wire.SCHEMA_VERSION, daemon="line1", seq=self.health_seq, time_ns=time.time_ns(), period_s=PERIOD_S,
            uptime_s=1.0, backend="onnxruntime", model_id="m", image_threshold=0.3,
            cameras=[wire.CameraHealth(camera="cam1", state=self.camera_state)],
        )  # fmt: skip
        self.health_seq += 1
        self._send(wire.health_topic("line1"), h)

    def _beat(self) -> None:
        while not self.stop_event.wait(PERIOD_S):
            if self.beating.is_set():
                self.heartbeat()

    def frame(self, verdict: str, score: float = 0.1, *, skip: int = 0, dropped: int = 0, capture_ns: int | None = None) -> None:
        self.frame_seq += skip + dropped
        now = time.time_ns()
        h = wire.FrameHeader(
            schema_version=wire.SCHEMA_VERSION, camera="cam1", seq=self.frame_seq, capture_ns=capture_ns or now, publish_ns=now,
            score=score, threshold=0.3, verdict=verdict, model_id="m", dropped=dropped,
            mask=wire.MaskInfo(encoding="raw", height_px=2, width_px=2),
        )  # fmt: skip
        self.frame_seq += 1
        self._send(wire.frame_topic("cam1"), h, b"\x00\xff\x00\xff")

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(2)
        self.sock.close()


def make_config(endpoint: str, plc_port: int, stream: dict | None = None, **reject) -> AdapterConfig:
    raw = {
        "daemon": {"endpoint": endpoint, "cameras": ["cam1"], "first_heartbeat_s": 1.0, "recover_after_s": 0.5, **(stream or {})},
        "plc": {"host": "127.0.0.1", "port": plc_port, "timeout_s": 0.5, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2},
        "reject": {"coil": REJECT, "pulse_ms": 150, **reject},
        "outputs": {
            "unavailable_coil": UNAVAILABLE, "alive_coil": ALIVE, "score_register": SCORE, "threshold_register": THRESHOLD,
            "defect_total_register": TOTAL, "defect_window_register": WINDOW, "defect_window_frames": 3, "status_register": STATUS,
        },
    }  # fmt: skip
    return msgspec.convert(raw, AdapterConfig)


@pytest.fixture
def rig():
    """PLC server + fake daemon + a function that starts the adapter on them; all stopped at teardown."""
    ctx = zmq.Context()
    plc = PlcSim(free_port())
    plc.start()
    daemon = Daemon(ctx)
    daemon.thread.start()
    runs: list[tuple[threading.Thread, threading.Event]] = []

    def start_adapter(stream: dict | None = None, **reject) -> AdapterConfig:
        cfg = make_config(daemon.endpoint, plc.port, stream, **reject)
        stop = threading.Event()
        result: list[int] = []
        t = threading.Thread(target=lambda: result.append(run_modbus_adapter(cfg, stop)), name="adapter-under-test", daemon=True)
        t.start()
        runs.append((t, stop))
        # Wait for the subscription to be live before publishing (PUB drops what it sends before that).
        daemon.beating.set()
        wait_for(lambda: plc.value("coil", UNAVAILABLE) == 0, what="inspection available")
        return cfg

    class Rig:
        pass

    r = Rig()
    r.plc, r.daemon, r.start_adapter, r.runs = plc, daemon, start_adapter, runs
    yield r
    for t, stop in runs:
        stop.set()
        t.join(5)
        assert not t.is_alive(), "adapter did not stop"
    daemon.close()
    if plc.thread.is_alive():
        plc.stop()
    ctx.destroy(linger=0)


def test_defect_pulses_writes_registers_and_alive_toggles(rig):
    rig.start_adapter()
    plc, daemon = rig.plc, rig.daemon
    wait_for(lambda: plc.value("reg", STATUS) == 0, what="status 0")  # registers follow the coils in one pass
    daemon.frame("ok", 0.1)
    daemon.frame("defect", 0.5)
    wait_for(lambda: len(plc.pulses()) == 1, what="one reject pulse")
    assert 0.12 <= plc.pulses()[0] <= 0.6  # 150 ms, with slack for a loaded machine
    wait_for(lambda: plc.value("reg", TOTAL) == 1, what="defect count")
    assert plc.value("reg", SCORE) == 500 and plc.value("reg", THRESHOLD) == 300
    daemon.frame("ok", 0.25)
    daemon.frame("ok", 0.2)
    daemon.frame("ok", 0.1)  # the defect leaves the 3-frame window
    wait_for(lambda: plc.value("reg", SCORE) == 100, what="last score")
    wait_for(lambda: plc.value("reg", WINDOW) == 0, what="window count")  # written after the score
    assert plc.value("reg", TOTAL) == 1
    daemon.frame("unknown", float("nan"))  # reject_unknown defaults to true: fail safe
    wait_for(lambda: len(plc.pulses()) == 2, what="pulse for an unjudged frame")
    wait_for(lambda: plc.value("reg", SCORE) == 65535, what="not-judged score")
    # alive toggles with every heartbeat: several alternating writes
    wait_for(lambda: len(plc.history("coil", ALIVE)) >= 4, what="alive toggles")
    toggles = [v for _, v in plc.history("coil", ALIVE)]
    assert all(a != b for a, b in zip(toggles, toggles[1:]))


def test_review_is_rejected_by_default_like_a_defect(rig):
    rig.start_adapter()
    plc, daemon = rig.plc, rig.daemon
    daemon.frame("review", 0.25)  # in the uncertain band: fail safe, a person looks at the part
    wait_for(lambda: len(plc.pulses()) == 1, what="a reject pulse for a review verdict")
    wait_for(lambda: plc.value("reg", SCORE) == 250, what="the review frame's score")
    assert plc.value("reg", TOTAL) == 0, "the defect counters count defects only"


def test_review_passes_when_configured(rig):
    rig.start_adapter(stream={"on_review": "pass"})
    plc, daemon = rig.plc, rig.daemon
    daemon.frame("review", 0.25)
    wait_for(lambda: plc.value("reg", SCORE) == 250, what="the review frame judged")
    time.sleep(0.3)  # a pulse would have started at once (delay_ms 0)
    assert not [v for _, v in plc.history("coil", REJECT) if v], "a passed review frame fired the reject coil"
    daemon.frame("defect", 0.5)
    wait_for(lambda: len(plc.pulses()) == 1, what="the defect's pulse")


def test_heartbeats_stop_then_resume(rig, caplog):
    rig.start_adapter()
    plc, daemon = rig.plc, rig.daemon
    daemon.beating.clear()
    t0 = time.monotonic()
    wait_for(lambda: plc.value("coil", UNAVAILABLE) == 1, what="unavailable after silence")
    assert time.monotonic() - t0 >= 0.25  # not before 3 x period
    wait_for(lambda: plc.value("reg", STATUS) == STATUS_BITS["no_heartbeat"], what="status: no heartbeat")
    alive_writes = len(plc.history("coil", ALIVE))
    time.sleep(0.3)
    assert len(plc.history("coil", ALIVE)) == alive_writes  # no heartbeat, no toggle
    daemon.beating.set()
    wait_for(lambda: plc.value("coil", UNAVAILABLE) == 0, what="available again")
    wait_for(lambda: plc.value("reg", STATUS) == 0, what="status cleared")


def test_sequence_gap_sets_unavailable_until_clean(rig):
    rig.start_adapter()
    plc, daemon = rig.plc, rig.daemon
    daemon.frame("ok")
    daemon.frame("ok", skip=2)  # two frames lost on the way
    wait_for(lambda: plc.value("coil", UNAVAILABLE) == 1, what="unavailable after a gap")
    wait_for(lambda: plc.value("reg", STATUS) == STATUS_BITS["lost_frames"], what="status: lost frames")
    t_unavail = plc.history("coil", UNAVAILABLE)[-1][0]
    wait_for(lambda: plc.value("coil", UNAVAILABLE) == 0, what="recovered after recover_after_s")
    assert plc.history("coil", UNAVAILABLE)[-1][0] - t_unavail >= 0.4
    # frames the daemon itself dropped and reported are not a gap (on_dropped = "ignore")
    daemon.frame("ok", dropped=3)
    time.sleep(0.3)
    assert plc.value("coil", UNAVAILABLE) == 0


def test_camera_down_and_reject_all_when_unavailable(rig):
    rig.start_adapter(reject_all_when_unavailable=True)
    plc, daemon = rig.plc, rig.daemon
    assert plc.value("coil", REJECT) == 0
    daemon.camera_state = "reconnecting"
    wait_for(lambda: plc.value("coil", UNAVAILABLE) == 1, what="unavailable while the camera reconnects")
    assert plc.value("coil", REJECT) == 1  # everything is rejected meanwhile
    wait_for(lambda: plc.value("reg", STATUS) == STATUS_BITS["camera_down"], what="status: camera down")
    daemon.camera_state = "streaming"
    wait_for(lambda: plc.value("coil", UNAVAILABLE) == 0, what="available again")
    wait_for(lambda: plc.value("coil", REJECT) == 0, what="reject released")


def test_fast_defects_extend_the_pulse(rig):
    rig.start_adapter()
    plc, daemon = rig.plc, rig.daemon
    for _ in range(4):
        daemon.frame("defect", 0.9)
        time.sleep(0.05)  # faster than the 150 ms pulse
    wait_for(lambda: len(plc.pulses()) >= 1 and plc.value("coil", REJECT) == 0, what="merged pulse ends")
    assert len(plc.pulses()) == 1
    assert plc.pulses()[0] >= 0.15 + 3 * 0.05 - 0.03  # covers the last defect's full pulse


def test_fast_defects_queue_separate_pulses(rig):
    rig.start_adapter(overlap="queue", pulse_ms=60, min_gap_ms=30)
    plc, daemon = rig.plc, rig.daemon
    for _ in range(4):
        daemon.frame("defect", 0.9)  # all at once: four pulses needed
    wait_for(lambda: len(plc.pulses()) == 4, what="four separate pulses")
    edges = plc.history("coil", REJECT)
    offs = [t for t, v in edges if v == 0]
    ons = [t for t, v in edges if v == 1]
    assert all(on - off >= 0.02 for off, on in zip(offs, ons[1:]))  # a visible gap between pulses


def test_delay_from_capture(rig):
    rig.start_adapter(delay_ms=400)
    plc, daemon = rig.plc, rig.daemon
    t_sent = time.monotonic()
    daemon.frame("defect", 0.9, capture_ns=time.time_ns() - 250_000_000)  # captured 250 ms ago
    wait_for(lambda: plc.value("coil", REJECT) == 1, what="delayed pulse")
    started = plc.history("coil", REJECT)[-1][0] - t_sent
    # ~150 ms after sending when the delay counts from capture; counted from receipt it would be >= 400 ms.
    assert 0.08 <= started <= 0.32


def test_encoder_offset_pulse(rig):
    rig.start_adapter(encoder={"register": ENCODER, "offset_counts": 100, "poll_ms": 5})
    plc, daemon = rig.plc, rig.daemon
    client = ModbusTcpClient("127.0.0.1", port=plc.port, timeout=1)
    assert client.connect()
    try:
        client.write_register(ENCODER, 65500, device_id=1)  # near the 16-bit wrap
        time.sleep(0.05)
        daemon.frame("defect", 0.9)
        wait_for(lambda: any(a == ENCODER for _, _, a, _ in plc.writes) and plc.value("reg", TOTAL) == 1, what="verdict seen")
        time.sleep(0.1)
        client.write_register(ENCODER, (65500 + 99) % 65536, device_id=1)
        time.sleep(0.15)
        assert plc.pulses() == [] and plc.value("coil", REJECT) in (None, 0)  # 99 counts: not yet
        client.write_register(ENCODER, (65500 + 100) % 65536, device_id=1)  # wrapped past 65535
        wait_for(lambda: plc.value("coil", REJECT) == 1, what="pulse at the encoder offset")
    finally:
        client.close()


def test_plc_down_then_up_reconnects_without_blocking_the_stream(rig, caplog):
    caplog.set_level(logging.WARNING)
    rig.start_adapter()
    plc, daemon = rig.plc, rig.daemon
    plc.stop()
    for _ in range(5):  # verdicts keep flowing while the PLC is gone
        daemon.frame("defect", 0.7)
        time.sleep(0.1)
    time.sleep(0.5)
    assert not [r for r in caplog.records if "no heartbeat" in r.getMessage()], "the stream stalled while the PLC was down"
    restarted = PlcSim(plc.port)
    restarted.start()
    rig.plc = restarted
    try:
        # After reconnecting, everything is written again, including what arrived during the outage.
        wait_for(lambda: restarted.value("reg", TOTAL) == 5, what="defect count from the outage")
        assert restarted.value("coil", UNAVAILABLE) == 0
        assert restarted.value("reg", SCORE) == 700
        daemon.frame("defect", 0.8)
        wait_for(lambda: len(restarted.pulses()) == 1, what="pulse after reconnect")
        assert any("unreachable" in r.getMessage() or "reconnecting" in r.getMessage() for r in caplog.records)
    finally:
        restarted.stop()


def test_hanging_plc_does_not_stall_the_stream(rig, caplog):
    """A PLC that accepts TCP but never answers: requests time out in the PLC thread only."""
    caplog.set_level(logging.WARNING)
    plc, daemon = rig.plc, rig.daemon
    plc.stop()
    with socket.socket() as listener:  # accepts connections into its backlog, never replies
        listener.bind(("127.0.0.1", plc.port))
        listener.listen(8)
        cfg = make_config(daemon.endpoint, plc.port)
        stop = threading.Event()
        t = threading.Thread(target=run_modbus_adapter, args=(cfg, stop), name="adapter-under-test", daemon=True)
        t.start()
        try:
            daemon.beating.set()
            for _ in range(10):
                daemon.frame("defect", 0.9)
                time.sleep(0.1)
            messages = [r.getMessage() for r in caplog.records]
            assert not [m for m in messages if "no heartbeat" in m], "the stream stalled behind the PLC"
            assert [m for m in messages if "failed" in m and "PLC" in m], "the hanging PLC went unnoticed"
        finally:
            stop.set()
            t.join(5)
    assert not t.is_alive()


def test_adapter_over_curve(tmp_path):
    """[daemon.security]: the adapter's key is allow-listed on a CURVE publisher, and it works end to end."""
    from edge.security import create_key_pair, load_key_pair, secure_server_socket, start_authenticator

    keys = tmp_path / "keys"
    server = create_key_pair(keys, "edge")
    client = create_key_pair(keys, "adapter1")
    allow = tmp_path / "allowed"
    allow.mkdir()
    (allow / "adapter1.key").write_bytes(client.public.read_bytes())

    ctx = zmq.Context()
    auth = start_authenticator(ctx, allow)
    plc = PlcSim(free_port())
    plc.start()
    pair = load_key_pair(server.secret)
    daemon = Daemon(ctx, secure=lambda sock: secure_server_socket(sock, pair))
    daemon.thread.start()
    daemon.beating.set()
    raw = msgspec.to_builtins(make_config(daemon.endpoint, plc.port))
    raw["daemon"]["security"] = {"curve": True, "client_secret_key": str(client.secret), "server_public_key": str(server.public)}
    cfg = msgspec.convert(raw, AdapterConfig)
    stop = threading.Event()
    t = threading.Thread(target=run_modbus_adapter, args=(cfg, stop), name="adapter-under-test", daemon=True)
    t.start()
    try:
        wait_for(lambda: plc.value("coil", UNAVAILABLE) == 0, what="available over CURVE")
        daemon.frame("defect", 0.9)
        wait_for(lambda: len(plc.pulses()) == 1, what="pulse over CURVE")
    finally:
        stop.set()
        t.join(5)
        daemon.close()
        plc.stop()
        auth.stop()
        ctx.destroy(linger=0)
    assert not t.is_alive()


def test_reconnect_backs_off_when_the_plc_accepts_then_hangs_up(rig):
    """A peer that accepts TCP and closes at once (a wrong port, a gateway without its PLC) must not be
    hammered: a bare TCP accept does not reset the backoff, only an answered request does."""
    plc, daemon = rig.plc, rig.daemon
    plc.stop()
    accepted = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", plc.port))
        listener.listen(16)
        listener.settimeout(0.05)
        cfg = make_config(daemon.endpoint, plc.port)  # backoff 0.05 s doubling to 0.2 s
        stop = threading.Event()
        t = threading.Thread(target=run_modbus_adapter, args=(cfg, stop), name="adapter-under-test", daemon=True)
        t.start()
        try:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                accepted.append(time.monotonic())
                conn.close()
        finally:
            stop.set()
            t.join(5)
    gaps = [b - a for a, b in zip(accepted, accepted[1:])]
    assert len(accepted) >= 3, accepted
    assert len(accepted) <= 16  # 2 s at the 0.2 s cap: about 11; without backoff it would be about 40
    assert max(gaps) >= 0.15  # the delay grew to the cap
