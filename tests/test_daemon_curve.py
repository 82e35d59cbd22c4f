"""The real daemon with `[security] curve = true`: allow-listed clients get the stream and the control
endpoint; an unknown key (or no CURVE at all) gets nothing, and the daemon's log says whom it refused."""

from __future__ import annotations

import threading
import time

import cv2
import msgspec
import numpy as np
import pytest
import zmq

from edge.client.control import send_request
from edge.daemon.config import config_from_dict
from edge.daemon.daemon import Daemon
from edge.security import ClientSecurityConfig, client_secure, create_key_pair, load_key_pair, load_public_key, secure_client_socket
from edge.wire import FrameHeader, Health, Status

DECODER = msgspec.msgpack.Decoder(FrameHeader | Health)


def _sub(ctx, endpoint, files=None, server_public=None):
    sock = ctx.socket(zmq.SUB)
    sock.linger = 0
    if files is not None:
        secure_client_socket(sock, load_key_pair(files.secret), server_public)
    sock.subscribe(b"")
    sock.connect(endpoint)
    return sock


def _collect(sock, frames, timeout_s):
    """Messages until `frames` frame headers and one heartbeat arrived, or timeout_s passed."""
    got = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(isinstance(m, FrameHeader) for m in got) >= frames and any(isinstance(m, Health) for m in got):
            break
        if sock.poll(200):
            got.append(DECODER.decode(sock.recv_multipart()[1]))
    return got


def test_curve_daemon_admits_only_allow_listed_keys(tiny_bundle, tmp_path, caplog):
    keys = tmp_path / "keys"
    server = create_key_pair(keys, "edge")
    allowed = create_key_pair(keys, "adapter1")
    unknown = create_key_pair(keys, "intruder")
    allow = tmp_path / "allowed"
    allow.mkdir()
    (allow / "adapter1.key").write_bytes(allowed.public.read_bytes())
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.png"), np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8))

    cfg = config_from_dict(
        {
            "bundle": str(tiny_bundle),
            "threads": 1,
            "cameras": [{"id": "cam", "source": str(images), "loop": True, "pace_fps": 30}],
            "publish": {"endpoints": ["tcp://127.0.0.1:*"], "heartbeat_s": 0.2, "wait_for_subscriber_s": 10},
            "control": {"endpoint": "tcp://127.0.0.1:*"},
            "security": {"curve": True, "server_secret_key": str(server.secret), "allowed_clients": str(allow)},
        },
        origin="test",
    )
    caplog.set_level("WARNING", logger="edge.security")
    daemon = Daemon(cfg)
    ctx = zmq.Context()
    server_public = load_public_key(server.public)
    thread = threading.Thread(target=daemon.run, name="test-daemon", daemon=True)
    try:
        stream = daemon.publisher.endpoints[0]
        intruder = _sub(ctx, stream, unknown, server_public)
        plain = _sub(ctx, stream)
        good = _sub(ctx, stream, allowed, server_public)
        thread.start()

        got = _collect(good, frames=10, timeout_s=20)
        frames = [m for m in got if isinstance(m, FrameHeader)]
        assert len(frames) >= 10 and any(isinstance(m, Health) for m in got), "the allowed subscriber did not get the stream"
        # everything, in order: each seq follows the previous one, or the daemon says it dropped the rest
        assert all(b.seq == a.seq + 1 + b.dropped for a, b in zip(frames, frames[1:]))
        assert not intruder.poll(300) and not plain.poll(100), "a client without an allowed key received the stream"
        # Both retry every 100 ms; each kind of refusal is logged once (a minute), naming who and why.
        refusals = [r.getMessage() for r in caplog.records if r.name == "edge.security"]
        unknown_key = load_public_key(unknown.public).decode()
        assert [m for m in refusals if "refused" in m and unknown_key in m] == [
            f"CURVE client {unknown_key} from 127.0.0.1 refused: its public key is not in the allow-list {allow}; add its NAME.key there and send SIGHUP"
        ], refusals
        assert len([m for m in refusals if "publish.endpoints" in m and "does not use CURVE" in m]) == 1, refusals

        ok = send_request(
            daemon.control.endpoints[0], Status(), timeout_s=5, ctx=ctx,
            configure=client_secure(ClientSecurityConfig(curve=True, client_secret_key=str(allowed.secret), server_public_key=str(server.public))),
        )  # fmt: skip
        assert ok.ok and ok.model_id
        with pytest.raises(TimeoutError):
            send_request(
                daemon.control.endpoints[0], Status(), timeout_s=1, ctx=ctx,
                configure=client_secure(ClientSecurityConfig(curve=True, client_secret_key=str(unknown.secret), server_public_key=str(server.public))),
            )  # fmt: skip
        with pytest.raises(TimeoutError):
            send_request(daemon.control.endpoints[0], Status(), timeout_s=0.5, ctx=ctx)  # no CURVE at all

        # SIGHUP re-reads the allow-list: a newly listed client gets in without a restart.
        (allow / "intruder.key").write_bytes(unknown.public.read_bytes())
        daemon.request_reload()
        deadline = time.monotonic() + 10
        while len(daemon.security.auth.allowed) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        late = send_request(
            daemon.control.endpoints[0], Status(), timeout_s=5, ctx=ctx,
            configure=client_secure(ClientSecurityConfig(curve=True, client_secret_key=str(unknown.secret), server_public_key=str(server.public))),
        )  # fmt: skip
        assert late.ok
        for s in (intruder, plain, good):
            s.close()
    finally:
        daemon.request_stop()
        if thread.ident is not None:
            thread.join(20)
        ctx.destroy(linger=0)
    assert not thread.is_alive(), "daemon did not stop"
