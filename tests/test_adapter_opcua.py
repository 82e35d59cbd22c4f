"""The OPC UA adapter end to end: a real ZeroMQ publisher (tests/wirepub.py) feeding the adapter, whose
asyncua server an asyncua client reads on loopback over Basic256Sha256 (SignAndEncrypt) with real
certificates written by `create_certificate`."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import msgspec
import pytest

pytest.importorskip("asyncua", reason="the OPC UA adapter needs asyncua: pip install '.[opcua]'")

from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

from edge import wire
from edge.adapter.opcua import run_opcua_adapter
from edge.adapter.opcua_certs import create_certificate
from edge.adapter.opcua_config import OpcuaAdapterConfig, load_opcua_config
from edge.errors import UserError
from edge.manifest import read_manifest
from wireline import Line

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

SERVER_URI = "urn:ssae:test:inspector"
CLIENT_URI = "urn:ssae:test:client"
NS_URI = "urn:ssae:test:inspection"
PERIOD_S = 0.1  # heartbeat period: 3 missed = 0.3 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout_s=5.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("opcua-certs")
    create_certificate(root, "server", uri=SERVER_URI, role="server", host="localhost")
    client = create_certificate(root / "client", "client", uri=CLIENT_URI, role="client", host="localhost")
    create_certificate(root / "rogue", "rogue", uri=CLIENT_URI, role="client", host="localhost")  # never trusted
    (root / "trusted").mkdir()
    (root / "trusted" / "client.der").write_bytes(client.certificate.read_bytes())
    return root


def adapter_config(endpoint: str, port: int, security: dict, **daemon) -> OpcuaAdapterConfig:
    return msgspec.convert(
        {
            "daemon": {"endpoint": endpoint, "cameras": ["cam1"], "missed_heartbeats": 3, "first_heartbeat_s": 5.0, "recover_after_s": 0.5, "idle_after_s": 1.0, **daemon},
            "server": {"endpoint": f"opc.tcp://127.0.0.1:{port}/ssae/", "application_uri": SERVER_URI, "namespace_uri": NS_URI, "security": security},
        },
        OpcuaAdapterConfig,
    )


class Running:
    """The adapter in its own thread, as `ssae adapter opcua` runs it."""

    def __init__(self, cfg: OpcuaAdapterConfig, port: int) -> None:
        self.stop = threading.Event()
        self.notes: list[str] = []
        self.code: list[int] = []
        self.thread = threading.Thread(target=lambda: self.code.append(run_opcua_adapter(cfg, self.stop, self.notes.append)), name="opcua-adapter")
        self.thread.start()
        wait_for(lambda: "READY=1" in self.notes or not self.thread.is_alive(), 30, "the adapter to listen")
        assert self.thread.is_alive(), "adapter exited at start"
        self.url = f"opc.tcp://127.0.0.1:{port}/ssae/"

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "adapter did not stop"


@pytest.fixture(scope="module")
def secure(certs):
    line = Line(PERIOD_S)
    port = free_port()
    cfg = adapter_config(
        line.endpoint, port,
        {"policy": "Basic256Sha256", "certificate": str(certs / "server.der"), "private_key": str(certs / "server.pem"), "trusted_clients": str(certs / "trusted")},
    )  # fmt: skip
    adapter = Running(cfg, port)
    line.start()
    yield line, adapter
    adapter.close()
    line.close()


async def secure_client(url: str, certs: Path, name: str = "client", identity: bool = True) -> Client:
    client = Client(url, timeout=4)
    client.application_uri = CLIENT_URI
    folder = certs / ("client" if name == "client" else "rogue")
    await client.set_security(SecurityPolicyBasic256Sha256, str(folder / f"{name}.der"), str(folder / f"{name}.pem"), server_certificate=str(certs / "server.der"))
    if identity:  # the application certificate doubles as the user's (X509 identity token)
        await client.load_client_certificate(str(folder / f"{name}.der"))
        await client.load_private_key(str(folder / f"{name}.pem"))
    return client


async def read(client: Client, *paths: str, status: bool = False):
    ns = await client.get_namespace_index(NS_URI)
    out = []
    for path in paths:
        node = client.get_node(ua.NodeId(path, ns))
        out.append(await node.read_data_value(raise_on_bad_status=False) if status else await node.read_value())
    return out


async def until(client: Client, path: str, want: set, timeout_s: float = 5.0):
    deadline = time.monotonic() + timeout_s
    while True:
        (value,) = await read(client, path)
        if value in want:
            return value
        assert time.monotonic() < deadline, f"{path} = {value!r}, wanted one of {want}"
        await asyncio.sleep(0.02)


def test_results_counters_and_state_over_an_encrypted_session(secure, certs):
    line, adapter = secure
    p = "Inspector.Cameras.cam1"
    region = {"x": 1, "y": 2, "w": 3, "h": 4, "area_px": 12, "peak_score": 0.95}

    async def check():
        async with await secure_client(adapter.url, certs) as c:
            line.frame(camera="cam1", seq=0, verdict="ok", score=0.1)
            line.frame(camera="cam1", seq=1, verdict="defect", score=0.9, regions=[region])
            last = line.frame(camera="cam1", seq=4, verdict="defect", score=0.7, dropped=1, part_id="P-42", recipe="b")  # seq 2, 3: one dropped by the daemon, one lost
            await until(c, f"{p}.State", {"error"})
            reason, frames, defects, lost, dropped = await read(c, f"{p}.StateReason", *(f"{p}.Counters.{n}" for n in ("Frames", "Defects", "Lost", "Dropped")))
            assert "1 frame(s) lost" in reason
            assert (frames, defects, lost, dropped) == (3, 2, 1, 1)
            verdict, score, threshold, seq, model_id, regions, count, captured, part = await read(
                c, *(f"{p}.Result.{n}" for n in ("Verdict", "Score", "Threshold", "Seq", "ModelId", "Regions", "RegionCount", "CaptureTime", "PartId"))
            )
            assert part == "P-42"
            assert await until(c, "Inspector.Recipe", {"b"}) == "b"  # no recipe in this line's heartbeats: the latest frame's
            assert (verdict, score, threshold, seq, model_id, count) == ("defect", pytest.approx(0.7), pytest.approx(0.5), 4, "m" * 64, 0)
            assert json.loads(regions) == []
            assert abs(captured.timestamp() - last.capture_ns / 1e9) < 0.01
            inspector_state, daemon = await read(c, "Inspector.State", "Inspector.Daemon")
            assert inspector_state == "error" and daemon == "d1"
            # A clean stream for recover_after_s: back to busy (a frame within idle_after_s) or ready.
            line.frame(camera="cam1", seq=5, verdict="ok", score=0.2, regions=[region])
            await until(c, f"{p}.State", {"busy", "ready"})
            regions, count, verdict, part = await read(c, f"{p}.Result.Regions", f"{p}.Result.RegionCount", f"{p}.Result.Verdict", f"{p}.Result.PartId")
            assert json.loads(regions) == [region] and count == 1 and verdict == "ok" and part == ""  # a free-running frame has no part id

    asyncio.run(check())


def test_untrusted_anonymous_unsecured_and_writing_clients_are_refused(secure, certs):
    _, adapter = secure

    async def attempts():
        refused = {}
        for label, make in (
            ("untrusted certificate", lambda: secure_client(adapter.url, certs, name="rogue")),
            ("anonymous on a trusted channel", lambda: secure_client(adapter.url, certs, identity=False)),
        ):
            client = await make()
            with pytest.raises(ua.UaError) as e:
                async with client:
                    await read(client, "Inspector.State")
            refused[label] = type(e.value).__name__
        plain = Client(adapter.url, timeout=4)  # no security at all
        with pytest.raises((ua.UaError, OSError, asyncio.TimeoutError, TimeoutError)):
            async with plain:
                await read(plain, "Inspector.State")
        async with await secure_client(adapter.url, certs) as c:  # trusted, but read-only
            ns = await c.get_namespace_index(NS_URI)
            with pytest.raises(ua.UaStatusCodeError):
                await c.get_node(ua.NodeId("Inspector.State", ns)).write_value(ua.Variant("ready", ua.VariantType.String))
        return refused

    refused = asyncio.run(attempts())
    assert refused["untrusted certificate"] == "BadCertificateUntrusted"
    assert refused["anonymous on a trusted channel"] == "BadIdentityTokenRejected"


def test_state_goes_unavailable_when_heartbeats_stop(secure, certs):
    line, adapter = secure

    async def check():
        async with await secure_client(adapter.url, certs) as c:
            line.frame(camera="cam1", seq=6, verdict="ok")  # continues the first test's stream (or starts one)
            await until(c, "Inspector.State", {"busy", "ready"})
            line.beating.clear()
            try:
                await until(c, "Inspector.State", {"unavailable"}, timeout_s=3)
                cam, reason, score = await read(c, "Inspector.Cameras.cam1.State", "Inspector.StateReason", "Inspector.Cameras.cam1.Result.Score", status=True)
                assert cam.Value.Value == "unavailable" and "no heartbeat" in reason.Value.Value
                assert score.StatusCode.name == "UncertainLastUsableValue"  # the last score, flagged stale
            finally:
                line.beating.set()
            await until(c, "Inspector.State", {"busy", "ready"})
            (score,) = await read(c, "Inspector.Cameras.cam1.Result.Score", status=True)
            assert score.StatusCode.is_good()

    asyncio.run(check())


def test_cameras_from_heartbeats_and_unavailable_on_stop():
    """Policy "none" with anonymous sessions (a test bench), cameras = [] (every camera the daemon reports):
    nodes appear with the first heartbeat, and a subscribed client sees "unavailable" when the adapter stops."""
    cameras = [wire.CameraHealth(camera="cam1", state="streaming"), wire.CameraHealth(camera="cam2", state="reconnecting", last_error="rtsp timeout")]
    line = Line(PERIOD_S, cameras=cameras)
    port = free_port()
    # daemon.control makes SelectRecipe exist; recipe_select "certificate" refuses it to a session without one.
    adapter = Running(adapter_config(line.endpoint, port, {"policy": "none", "allow_anonymous": True}, cameras=[], control="tcp://127.0.0.1:1"), port)
    seen: list[str] = []

    class Handler:
        def datachange_notification(self, node, value, data):
            seen.append(value)

    async def watch():
        async with Client(adapter.url, timeout=4) as c:
            ns = await c.get_namespace_index(NS_URI)
            sub = await c.create_subscription(50, Handler())
            await sub.subscribe_data_change(c.get_node(ua.NodeId("Inspector.State", ns)))
            line.start()
            await until(c, "Inspector.State", {"error"})
            reason, cam1 = await read(c, "Inspector.Cameras.cam2.StateReason", "Inspector.Cameras.cam1.State")
            assert reason == "camera reconnecting: rtsp timeout" and cam1 in ("ready", "busy")
            (reason,) = await read(c, "Inspector.StateReason")
            assert reason == "cam2: camera reconnecting: rtsp timeout"
            with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):  # anonymous: may read, may not switch
                await c.get_node(ua.NodeId("Inspector", ns)).call_method(ua.NodeId("Inspector.SelectRecipe", ns), ua.Variant("a", ua.VariantType.String))
            deadline = time.monotonic() + 5
            while "error" not in seen and time.monotonic() < deadline:  # the subscription has caught up
                await asyncio.sleep(0.02)
            adapter.stop.set()
            while seen[-1:] != ["unavailable"] and time.monotonic() < deadline + 5:
                await asyncio.sleep(0.02)

    try:
        try:
            asyncio.run(watch())
        except (ua.UaError, OSError, ConnectionError):
            pass  # the server closing under the client
        assert seen[0] == "unavailable" and "error" in seen and seen[-1] == "unavailable", seen
    finally:
        adapter.close()
        line.close()
    assert adapter.code == [0] and adapter.notes[-1] == "STOPPING=1"


# --- config: errors name the field and the fix -------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "opcua.toml"
    path.write_text(text)
    return path


DAEMON = '[daemon]\nendpoint = "tcp://127.0.0.1:5555"\n'


@pytest.mark.parametrize(
    "text, expect",
    [
        (DAEMON + '[server]\n[server.security]\npolicy = "Basic256Sha256"\n', "server.security.certificate"),
        (DAEMON + '[server]\n[server.security]\npolicy = "none"\n', "allow_anonymous = true"),
        (DAEMON + "[server]\n", "server.security is missing"),
        (DAEMON + '[server]\nendpoint = "tcp://x:1"\n[server.security]\npolicy = "none"\nallow_anonymous = true\n', "opc.tcp://0.0.0.0:4840/ssae/"),
        (DAEMON + '[server]\n[server.security]\npolicy = "none"\nalow_anonymous = true\n', "alow_anonymous is not a known key"),
        ('[daemon]\nendpoint = "127.0.0.1:5555"\n[server]\n[server.security]\npolicy = "none"\nallow_anonymous = true\n', "tcp://127.0.0.1:5555"),
    ],
)
def test_config_errors_name_the_field_and_the_fix(tmp_path, text, expect):
    with pytest.raises(UserError) as e:
        load_opcua_config(write(tmp_path, text))
    assert expect in str(e.value) and str(tmp_path) in str(e.value)


def test_example_config_loads():
    cfg = load_opcua_config(Path(__file__).resolve().parent.parent / "configs" / "adapter" / "opcua.toml")
    assert cfg.server.security.policy == "Basic256Sha256" and not cfg.server.security.allow_anonymous


def test_certificate_uri_must_match_application_uri(certs, tmp_path):
    from edge.adapter.opcua import build_server

    cfg = adapter_config(
        "tcp://127.0.0.1:1", free_port(),
        {"policy": "Basic256Sha256", "certificate": str(certs / "server.der"), "private_key": str(certs / "server.pem"), "trusted_clients": str(certs / "trusted")},
    )  # fmt: skip
    wrong = msgspec.structs.replace(cfg.server, application_uri="urn:other")
    with pytest.raises(UserError, match=f"names {SERVER_URI}"):
        asyncio.run(build_server(wrong))
    missing = msgspec.structs.replace(cfg.server, security=msgspec.structs.replace(cfg.server.security, trusted_clients=str(tmp_path / "none")))
    with pytest.raises(UserError, match="trusted_clients .* is not a folder"):
        asyncio.run(build_server(missing))


def test_cli_refuses_a_bad_config_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from ssae import app

    result = CliRunner().invoke(app, ["adapter", "opcua", str(write(tmp_path, DAEMON + "[server]\n"))])
    assert result.exit_code == 2
    assert "server.security is missing" in result.output and "Traceback" not in result.output


def test_select_recipe_method_switches_a_real_daemon(certs, tiny_bundle, tmp_path):
    """Inspector.SelectRecipe calls the daemon's control endpoint; a corrupt recipe is refused, the running one stays."""
    from edge.daemon.config import config_from_dict
    from edge.daemon.daemon import Daemon
    from test_edge_daemon import noise, write_images
    from test_edge_recipes import corrupt, variant

    folder = write_images(tmp_path / "imgs", {f"{i}.png": noise((32, 32, 3), i) for i in range(2)})
    recipes = [{"name": "a", "bundle": str(tiny_bundle)}, {"name": "b", "bundle": str(variant(tiny_bundle, tmp_path / "b", "b"))}, {"name": "c", "bundle": str(corrupt(tiny_bundle, tmp_path / "c"))}]
    daemon = Daemon(config_from_dict({
        "cameras": [{"id": "cam1", "source": str(folder), "loop": True, "pace_fps": 20}], "recipes": recipes, "threads": 1,
        "control": {"endpoint": "tcp://127.0.0.1:*"}, "publish": {"endpoints": ["tcp://127.0.0.1:*"], "heartbeat_s": 0.2},
    }, origin="test"))  # fmt: skip
    daemon_thread = threading.Thread(target=daemon.run, name="test-daemon", daemon=True)
    daemon_thread.start()
    port = free_port()
    security = {"policy": "Basic256Sha256", "certificate": str(certs / "server.der"), "private_key": str(certs / "server.pem"),
                "trusted_clients": str(certs / "trusted")}  # fmt: skip
    adapter = Running(adapter_config(daemon.publisher.endpoints[0], port, security, control=daemon.control.endpoints[0]), port)

    async def check():
        async with await secure_client(adapter.url, certs) as c:
            ns = await c.get_namespace_index(NS_URI)
            inspector, method = c.get_node(ua.NodeId("Inspector", ns)), ua.NodeId("Inspector.SelectRecipe", ns)
            assert await until(c, "Inspector.Recipe", {"a"}) == "a"
            ok, message = await inspector.call_method(method, ua.Variant("b", ua.VariantType.String))
            assert ok and "recipe b active" in message, message
            await until(c, "Inspector.Recipe", {"b"})
            await until(c, "Inspector.ModelId", {read_manifest(tmp_path / "b").model_id})
            ok, message = await inspector.call_method(method, ua.Variant("c", ua.VariantType.String))
            assert not ok and "sha256" in message and "recipe b stays" in message
            (recipe,) = await read(c, "Inspector.Recipe")
            assert recipe == "b"

    try:
        asyncio.run(check())
    finally:
        adapter.close()
        daemon.request_stop()
        daemon_thread.join(10)
    assert daemon.model.recipe == "b"
