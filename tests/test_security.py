"""CURVE on real sockets: key files, allow-list, and a real ZAP authenticator on loopback."""

from __future__ import annotations

import stat

import msgspec
import pytest
import zmq
import zmq.auth

from edge import wire
from edge.errors import UserError
from edge.security import (
    ClientSecurityConfig,
    SecurityConfig,
    create_key_pair,
    load_allowed_keys,
    load_key_pair,
    load_public_key,
    secure_client_socket,
    secure_server_socket,
    start_authenticator,
    start_server_security,
)


@pytest.fixture
def keys(tmp_path):
    """Server, allowed client and unknown client key pairs; the allow-list folder holds only `allowed`."""
    secrets = tmp_path / "secrets"
    allow = tmp_path / "allowed"
    allow.mkdir()
    server = create_key_pair(secrets, "server")
    allowed = create_key_pair(secrets, "adapter")
    unknown = create_key_pair(secrets, "intruder")
    (allow / "adapter.key").write_bytes(allowed.public.read_bytes())
    return {"server": server, "allowed": allowed, "unknown": unknown, "allow_dir": allow}


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def test_key_files_modes_format_and_pyzmq_compat(tmp_path):
    files = create_key_pair(tmp_path / "k", "line1")
    assert stat.S_IMODE(files.secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.public.stat().st_mode) == 0o644
    pair = load_key_pair(files.secret)
    assert load_public_key(files.public) == pair.public
    assert "secret" not in files.public.read_text().split("public-key")[1]
    assert "<hidden>" in repr(pair) and pair.secret.decode() not in repr(pair)
    # Same ZPL format as czmq / zmq.auth: other languages' tools read our files.
    pub, sec = zmq.auth.load_certificate(files.secret)
    assert (pub, sec) == (pair.public, pair.secret)
    # The pair really is a CURVE pair: the public key derives from the secret.
    assert zmq.curve_public(pair.secret) == pair.public


def test_create_refuses_overwrite_without_force(tmp_path):
    first = create_key_pair(tmp_path, "a")
    before = first.secret.read_bytes()
    with pytest.raises(UserError, match="--force"):
        create_key_pair(tmp_path, "a")
    assert first.secret.read_bytes() == before
    create_key_pair(tmp_path, "a", force=True)
    assert first.secret.read_bytes() != before
    assert stat.S_IMODE(first.secret.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(UserError, match="letters"):
        create_key_pair(tmp_path, "../evil")


def test_allow_list_folder_file_and_errors(tmp_path, keys):
    k = load_key_pair(keys["allowed"].secret).public
    assert load_allowed_keys(keys["allow_dir"]) == {k}
    listing = tmp_path / "clients.txt"
    other = load_key_pair(keys["unknown"].secret).public
    listing.write_text(f"# line 1 adapters\n#no-space comment\n{k.decode()}\n\n  {other.decode()}  # spare HMI\n")
    assert load_allowed_keys(listing) == {k, other}
    assert load_allowed_keys(keys["allowed"].public) == {k}  # a single certificate works too
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no client public keys"):
        load_allowed_keys(tmp_path / "empty")
    bad = tmp_path / "bad.txt"
    bad.write_text("not-a-key\n")
    with pytest.raises(UserError, match=r"bad.txt:1.*Z85"):
        load_allowed_keys(bad)
    with pytest.raises(FileNotFoundError):
        load_allowed_keys(tmp_path / "missing")
    with pytest.raises(UserError, match="no public-key and secret-key"):
        load_key_pair(keys["allowed"].public)


def test_config_needs_keys_when_curve_on():
    with pytest.raises(msgspec.ValidationError, match="server_secret_key"):
        msgspec.convert({"curve": True}, SecurityConfig)
    with pytest.raises(msgspec.ValidationError, match="server_public_key"):
        msgspec.convert({"curve": True, "client_secret_key": "x"}, ClientSecurityConfig)
    with pytest.raises(msgspec.ValidationError, match="unknown"):
        msgspec.convert({"curv": True}, SecurityConfig)
    assert msgspec.convert({}, SecurityConfig).curve is False


def _client(ctx, kind, endpoint, client_files, server_files, linger=0):
    sock = ctx.socket(kind)
    sock.linger = linger
    if client_files is not None:
        secure_client_socket(sock, load_key_pair(client_files.secret), load_public_key(server_files.public))
    if kind == zmq.SUB:
        sock.subscribe(b"")
    sock.connect(endpoint)
    return sock


def _recv_all(sock, timeout_ms):
    """Everything that arrives until `timeout_ms` of silence."""
    got = []
    while sock.poll(timeout_ms):
        got.append(sock.recv_multipart())
    return got


def _publish_numbered(pub, n):
    enc = msgspec.msgpack.Encoder()
    for i in range(n):
        h = wire.Health(schema_version=1, daemon="d", seq=i, time_ns=0, period_s=1.0, uptime_s=0.0, backend="cpu", model_id="m", image_threshold=1.0)
        pub.send_multipart([wire.health_topic("d"), enc.encode(h)])


def test_pub_allows_listed_key_and_refuses_unknown(ctx, keys):
    client_ctx = zmq.Context()
    sec = start_server_security(
        ctx, SecurityConfig(curve=True, server_secret_key=str(keys["server"].secret), allowed_clients=str(keys["allow_dir"]))
    )
    try:
        pub = ctx.socket(zmq.XPUB)  # XPUB: the subscription arrives only once the handshake passed ZAP
        pub.linger = 0
        sec.secure(pub)
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        endpoint = f"tcp://127.0.0.1:{port}"
        intruder = _client(client_ctx, zmq.SUB, endpoint, keys["unknown"], keys["server"])
        plain = _client(client_ctx, zmq.SUB, endpoint, None, None)  # no CURVE at all
        good = _client(client_ctx, zmq.SUB, endpoint, keys["allowed"], keys["server"])

        assert pub.poll(5000), "allowed subscriber never completed the handshake"
        assert pub.recv() == b"\x01"
        assert not pub.poll(500), "a refused client's subscription reached the publisher"

        _publish_numbered(pub, 50)
        got = _recv_all(good, 1000)
        seqs = [msgspec.msgpack.decode(body, type=wire.Health).seq for _, body in got]
        assert seqs == list(range(50))  # everything, in order
        assert _recv_all(intruder, 300) == []
        assert _recv_all(plain, 100) == []
        for s in (intruder, plain, good, pub):
            s.close()
    finally:
        sec.stop()
        client_ctx.destroy(linger=0)


def test_control_endpoint_requires_allowed_key(ctx, keys):
    client_ctx = zmq.Context()
    auth = start_authenticator(ctx, keys["allow_dir"])
    try:
        rep = ctx.socket(zmq.REP)
        rep.linger = 0
        sec = SecurityConfig(curve=True, server_secret_key=str(keys["server"].secret), allowed_clients=str(keys["allow_dir"]))
        secure_server_socket(rep, load_key_pair(sec.server_secret_key))
        endpoint = f"tcp://127.0.0.1:{rep.bind_to_random_port('tcp://127.0.0.1')}"
        req_enc = msgspec.msgpack.Encoder()

        intruder = _client(client_ctx, zmq.REQ, endpoint, keys["unknown"], keys["server"])
        intruder.send(req_enc.encode(wire.Status()))
        assert not rep.poll(700), "a request from an unknown key reached the control endpoint"

        good = _client(client_ctx, zmq.REQ, endpoint, keys["allowed"], keys["server"])
        good.send(req_enc.encode(wire.Status()))
        assert rep.poll(5000)
        req = msgspec.msgpack.decode(rep.recv(), type=wire.Request)
        assert isinstance(req, wire.Status)
        rep.send(req_enc.encode(wire.Reply(ok=True, message="status")))
        assert good.poll(5000)
        assert msgspec.msgpack.decode(good.recv(), type=wire.Reply).ok
        assert not intruder.poll(200)

        # Reloading the allow-list admits a new client without restarting anything.
        (keys["allow_dir"] / "intruder.key").write_bytes(keys["unknown"].public.read_bytes())
        assert auth.reload() == 2
        late = _client(client_ctx, zmq.REQ, endpoint, keys["unknown"], keys["server"])
        late.send(req_enc.encode(wire.Status()))
        assert rep.poll(5000)
        rep.recv()
        for s in (intruder, good, late, rep):
            s.close()
    finally:
        auth.stop()
        client_ctx.destroy(linger=0)
