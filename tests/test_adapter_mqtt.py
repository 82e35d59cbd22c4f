"""The MQTT bridge end to end: a real ZeroMQ publisher feeding the bridge, a real mosquitto broker started
by the test on a free loopback port (its own config in tmp_path), and a paho subscriber reading the JSON.

Skipped where the mosquitto binary is missing (Debian: apt-get install -y mosquitto)."""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import pytest

pytest.importorskip("paho.mqtt", reason="the MQTT bridge needs paho-mqtt: pip install '.[mqtt]'")

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge.adapter.mqtt import run_mqtt_bridge
from edge.adapter.mqtt_config import MqttBridgeConfig, load_mqtt_config
from edge.errors import UserError
from wireline import Line

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.access(p, os.X_OK)), None)
needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (apt-get install -y mosquitto): MQTT bridge tests skipped")
PREFIX = "ssae/test"
PERIOD_S = 0.1
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A mosquitto process of our own: listener on loopback, no persistence, log to a file."""

    def __init__(self, folder: Path, port: int, extra: str = "") -> None:
        self.folder, self.port = folder, port
        self.conf = folder / "mosquitto.conf"
        # `user`: as root, mosquitto would switch to user "mosquitto", who cannot read pytest's tmp_path.
        me = pwd.getpwuid(os.geteuid()).pw_name
        self.conf.write_text(
            f"user {me}\nlistener {port} 127.0.0.1\npersistence false\nlog_dest file {folder / 'mosquitto.log'}\n"
            f"log_type error\nlog_type warning\n{extra or 'allow_anonymous true'}\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited: {self.proc.stderr.read().decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError("mosquitto did not listen within 5 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # like a crash or a power cut of the broker box: no goodbye to the clients
            self.proc.wait(5)


class Listener:
    """A paho subscriber to PREFIX/# that reconnects by itself; every message lands in a queue."""

    def __init__(self, port: int, qos: int = 1, **tls) -> None:
        self.messages: queue.Queue = queue.Queue()
        self.connected = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"listener-{port}-{time.monotonic_ns()}")
        if tls:
            self.client.tls_set(**tls)
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe(f"{PREFIX}/#", qos=qos), self.connected.set())
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.seen: list[tuple] = []  # everything, also what next() skipped
        self.client.on_message = lambda c, u, m: self._got((m.topic, json.loads(m.payload), m.retain, m.qos))
        self.client.connect_async("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert self.connected.wait(5), "listener could not connect"
        time.sleep(0.05)  # the SUBACK: subscribe() was sent from on_connect

    def _got(self, message: tuple) -> None:
        self.seen.append(message)
        self.messages.put(message)

    def next(self, topic: str, timeout_s: float = 5.0, where=lambda body: True):
        """The next message on `topic` whose body passes `where`; others are skipped."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no message on {topic} within {timeout_s} s")
            try:
                got = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if got[0] == topic and where(got[1]):
                return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def bridge_config(endpoint: str, port: int, broker: dict | None = None, **publish) -> MqttBridgeConfig:
    return msgspec.convert(
        {
            "daemon": {"endpoint": endpoint, "cameras": ["cam1"], "first_heartbeat_s": 5.0, "recover_after_s": 0.3, "idle_after_s": 1.0},
            "broker": {"host": "127.0.0.1", "port": port, "client_id": f"bridge-{port}", "keepalive_s": 5, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, **(broker or {})},
            "publish": {"topic_prefix": PREFIX, **publish},
        },
        MqttBridgeConfig,
    )


class Bridge:
    """The bridge in its own thread, as `ssae adapter mqtt` runs it."""

    def __init__(self, cfg: MqttBridgeConfig) -> None:
        self.stop = threading.Event()
        self.notes: list[str] = []
        self.code: list[int] = []
        self.thread = threading.Thread(target=lambda: self.code.append(run_mqtt_bridge(cfg, self.stop, self.notes.append)), name="mqtt-bridge")
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "bridge did not stop"


@pytest.fixture
def rig(tmp_path):
    """(line, broker, listener, start_bridge): everything stopped at teardown."""
    port = free_port()
    broker = Broker(tmp_path, port).start()
    line = Line(PERIOD_S)
    listener = Listener(port)
    bridges: list[Bridge] = []

    def start_bridge(**publish) -> Bridge:
        bridges.append(Bridge(bridge_config(line.endpoint, port, **publish)))
        line.start()
        return bridges[-1]

    yield line, broker, listener, start_bridge
    for b in bridges:
        b.close()
    listener.close()
    line.close()
    broker.kill()


@needs_broker
def test_results_arrive_as_json_with_qos_and_retain(rig):
    line, broker, listener, start_bridge = rig
    start_bridge(result_qos=1, result_retain=True)
    listener.next(f"{PREFIX}/state", where=lambda s: s["state"] in ("ready", "busy"))
    region = {"x": 1, "y": 2, "w": 3, "h": 4, "area_px": 12, "peak_score": 0.95}
    line.frame(camera="cam1", seq=0, verdict="ok", score=0.1)
    sent = line.frame(camera="cam1", seq=2, verdict="defect", score=0.8, regions=[region], part_id="P-42", recipe="b", trigger_id=3)  # seq 1 lost on the way
    line.frame(camera="cam1", seq=3, verdict="unknown", score=float("nan"))
    first = listener.next(f"{PREFIX}/cam1/result")
    _, body, retain, _ = listener.next(f"{PREFIX}/cam1/result")
    assert first[1]["seq"] == 0 and first[1]["lost"] == 0 and first[3] == 1  # QoS 1 end to end
    assert (first[1]["part_id"], first[1]["recipe"], body["part_id"], body["recipe"]) == ("", "", "P-42", "b")  # a free-running frame, a triggered one
    assert (body["seq"], body["verdict"], body["lost"], body["regions"]) == (2, "defect", 1, [region])
    assert body["score"] == pytest.approx(0.8) and body["threshold"] == pytest.approx(0.5)
    assert body["capture_ns"] == sent.capture_ns and body["daemon"] == "d1" and body["model_id"] == "m" * 64 and not retain
    unknown = listener.next(f"{PREFIX}/cam1/result")[1]
    assert unknown["verdict"] == "unknown" and unknown["score"] is None  # NaN is JSON null
    state = listener.next(f"{PREFIX}/state", where=lambda s: s["cameras"] and s["cameras"][0]["frames"] == 3)[1]
    cam = state["cameras"][0]
    assert (cam["camera"], cam["defects"], cam["lost"], cam["last_seq"]) == ("cam1", 1, 1, 3)
    assert state["bridge"]["undelivered"] == 0 and state["bridge"]["connects"] == 1
    # Retained: a subscriber that connects now gets the last result and the state at once, flagged retained.
    late = Listener(broker.port)
    try:
        _, body, _, _ = late.next(f"{PREFIX}/cam1/result", timeout_s=2, where=lambda b: b["seq"] == 3)
        retained = {topic: body for topic, body, retain, _ in late.seen if retain}
        assert retained[f"{PREFIX}/cam1/result"]["seq"] == 3  # the last result, kept by the broker
        assert retained[f"{PREFIX}/state"]["state"] in ("ready", "busy", "error")
    finally:
        late.close()


@needs_broker
def test_heartbeats_stop_state_unavailable_then_back(rig):
    line, _, listener, start_bridge = rig
    start_bridge()
    line.frame(camera="cam1", seq=0)
    listener.next(f"{PREFIX}/state", where=lambda s: s["state"] == "busy")
    line.beating.clear()
    _, state, _, qos = listener.next(f"{PREFIX}/state", timeout_s=3, where=lambda s: s["state"] == "unavailable")
    assert "no heartbeat" in state["reason"] and state["cameras"][0]["state"] == "unavailable" and qos == 1
    line.beating.set()
    listener.next(f"{PREFIX}/state", timeout_s=3, where=lambda s: s["state"] in ("ready", "busy"))


@needs_broker
def test_broker_killed_and_restarted_mid_stream(rig):
    line, broker, listener, start_bridge = rig
    start_bridge(result_qos=0)
    listener.next(f"{PREFIX}/state", where=lambda s: s["state"] in ("ready", "busy"))
    for seq in range(10):
        line.frame(camera="cam1", seq=seq)
    assert [listener.next(f"{PREFIX}/cam1/result")[1]["seq"] for _ in range(10)] == list(range(10))
    broker.kill()
    time.sleep(0.5)  # the bridge notices the closed socket at once; give its thread the moment
    for seq in range(10, 20):  # QoS 0 while the broker is away: not deliverable, counted
        line.frame(camera="cam1", seq=seq)
    time.sleep(0.3)
    broker.start()  # same port, empty broker: no retained state, no sessions
    # The bridge reconnects by itself and publishes its state again (retained), with the account.
    state = listener.next(f"{PREFIX}/state", timeout_s=5, where=lambda s: s["bridge"]["connects"] >= 2 and s["cameras"][0]["frames"] == 20)[1]
    assert state["bridge"]["undelivered"] == 10 and state["cameras"][0]["lost"] == 0  # all 20 frames reached the bridge
    for seq in range(20, 25):
        line.frame(camera="cam1", seq=seq)
    got = [listener.next(f"{PREFIX}/cam1/result")[1] for _ in range(5)]
    assert [g["seq"] for g in got] == list(range(20, 25))


@needs_broker
def test_password_login(tmp_path):
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "bridge", "s3cret"], check=True, capture_output=True, timeout=10)
    port = free_port()
    broker = Broker(tmp_path, port, extra=f"allow_anonymous false\npassword_file {passwords}\n").start()
    line = Line(PERIOD_S)
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "wrong").write_text("guess\n")
    bridges = []
    try:
        seen: queue.Queue = queue.Queue()
        sub = paho.Client(CallbackAPIVersion.VERSION2)
        sub.username_pw_set("bridge", "s3cret")
        sub.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/#", qos=1)
        sub.on_message = lambda c, u, m: seen.put(json.loads(m.payload))
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        for password in ("wrong", "pw"):
            cfg = bridge_config(line.endpoint, port, broker={"username": "bridge", "password_file": str(tmp_path / password), "client_id": password})
            bridges.append(Bridge(cfg))
        line.start()
        body = seen.get(timeout=5)
        assert body["state"] in ("ready", "busy", "unavailable") and body["bridge"]["connects"] == 1
        # Only one bridge got in: the other's attempts are refused (and logged), so every state comes from it.
        time.sleep(0.5)
        connects = set()
        while not seen.empty():
            connects.add(seen.get()["bridge"]["connects"])
        assert connects <= {1}
    finally:
        for b in bridges:
            b.close()
        sub.loop_stop()
        line.close()
        broker.kill()


def _tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a broker certificate for 127.0.0.1 signed by it (PEM): ca.pem, server.pem, server.key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])).issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(2).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


@needs_broker
def test_tls_to_the_broker(tmp_path):
    ca, cert, key = _tls_files(tmp_path)
    port = free_port()
    broker = Broker(tmp_path, port, extra=f"allow_anonymous true\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n").start()
    line = Line(PERIOD_S)
    listener = Listener(port, ca_certs=str(ca))
    bridge = Bridge(bridge_config(line.endpoint, port, broker={"tls": {"ca_file": str(ca)}}))
    try:
        line.start()
        listener.next(f"{PREFIX}/state", where=lambda s: s["state"] in ("ready", "busy"))  # the bridge is connected
        line.frame(camera="cam1", seq=0, verdict="defect", score=0.9)
        assert listener.next(f"{PREFIX}/cam1/result")[1]["verdict"] == "defect"
    finally:
        bridge.close()
        listener.close()
        line.close()
        broker.kill()


@needs_broker
def test_sigterm_publishes_unavailable_and_sigkill_leaves_the_last_will(tmp_path):
    port = free_port()
    broker = Broker(tmp_path, port).start()
    line = Line(PERIOD_S)
    listener = Listener(port)
    config = tmp_path / "bridge.toml"
    config.write_text(
        (ROOT / "configs" / "adapter" / "mqtt.toml").read_text()
        .replace('endpoint = "tcp://127.0.0.1:5555"', f'endpoint = "{line.endpoint}"')
        .replace("port = 1883", f"port = {port}")
        .replace('topic_prefix = "ssae/line1"', f'topic_prefix = "{PREFIX}"')
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = []
    try:
        for sig, expect in ((signal.SIGTERM, "adapter stopping"), (signal.SIGKILL, "bridge offline (last will)")):
            proc = subprocess.Popen([sys.executable, "-m", "ssae", "adapter", "mqtt", str(config)], env=env, stderr=subprocess.PIPE, text=True)
            procs.append(proc)
            if sig == signal.SIGTERM:
                line.start()
            listener.next(f"{PREFIX}/state", timeout_s=10, where=lambda s: s["state"] in ("ready", "busy"))
            proc.send_signal(sig)
            state = listener.next(f"{PREFIX}/state", timeout_s=5, where=lambda s: s["state"] == "unavailable")[1]
            assert state["reason"] == expect, state
            code = proc.wait(10)
            assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), proc.stderr.read()
            late = Listener(port)  # what a dashboard that connects now is told: the broker kept "unavailable"
            try:
                late.next(f"{PREFIX}/state", timeout_s=2)
                assert [(body["state"], body["reason"]) for topic, body, retain, _ in late.seen if retain] == [("unavailable", expect)]
            finally:
                late.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        listener.close()
        line.close()
        broker.kill()


# --- config: errors name the field and the fix -------------------------------------------------

BASE = '[daemon]\nendpoint = "tcp://127.0.0.1:5555"\n[broker]\nhost = "127.0.0.1"\n[publish]\ntopic_prefix = "ssae/line1"\n'


@pytest.mark.parametrize(
    "text, expect",
    [
        (BASE.replace('"ssae/line1"', '"ssae/#"'), "publish.topic_prefix"),
        (BASE.replace('"ssae/line1"', '"/ssae/"'), "no leading or trailing '/'"),
        (BASE + "result_qos = 3\n", "publish.result_qos"),
        (BASE.replace('host = "127.0.0.1"\n', 'host = "127.0.0.1"\npassword_file = "/x"\n'), "needs broker.username"),
        (BASE.replace('host = "127.0.0.1"\n', 'host = "127.0.0.1"\n[broker.tls]\ncert_file = "/x"\n'), "cert_file and broker.tls.key_file"),
        (BASE + "result_retian = true\n", "result_retian is not a known key"),
        (BASE.replace('[broker]\nhost = "127.0.0.1"\n', ""), "broker is missing"),
    ],
)
def test_config_errors_name_the_field_and_the_fix(tmp_path, text, expect):
    path = tmp_path / "mqtt.toml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_mqtt_config(path)
    assert expect in str(e.value) and str(path) in str(e.value)


def test_example_config_loads():
    cfg = load_mqtt_config(ROOT / "configs" / "adapter" / "mqtt.toml")
    assert cfg.publish.state_retain and cfg.publish.state_qos == 1 and cfg.broker.tls is None


def test_missing_password_file_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from ssae import app

    path = tmp_path / "mqtt.toml"
    path.write_text(BASE.replace('host = "127.0.0.1"\n', f'host = "127.0.0.1"\nusername = "u"\npassword_file = "{tmp_path / "nope"}"\n'))
    result = CliRunner().invoke(app, ["adapter", "mqtt", str(path)])
    assert result.exit_code == 2 and "broker.password_file" in result.output and "Traceback" not in result.output
