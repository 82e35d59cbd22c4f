"""ZeroMQ CURVE for the daemon's links: key files, the client allow-list and the ZAP authenticator.

Key files use the ZPL certificate format of czmq and pyzmq's zmq.auth (`NAME.key` holds the public
key, `NAME.key_secret` the public and the secret key), so a PLC adapter written in C, C# or Go with
czmq can load what `ssae edge keys` writes. Keys are 40-character Z85 text.

Server side (the daemon), in this order:
    auth = start_authenticator(ctx, cfg.allowed_clients)   # before any CURVE socket accepts peers
    secure_server_socket(pub_sock, load_key_pair(cfg.server_secret_key))   # before bind
    ...
    auth.stop()                                              # after the sockets are closed

Without a running authenticator libzmq lets every CURVE client in, so `start_server_security`
bundles both steps for callers that want one call. Client side: `curve_client` (or `client_secure` from a
config) makes the hook that every client passes as `configure=`; it runs before connect.

A refused client key is logged with its address, once a minute per key with a count. Clients refused
before the ZAP handler is asked (no CURVE, a wrong server key) are logged by edge/daemon/handshakes.py.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable
from pathlib import Path

import msgspec
import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from edge.errors import UserError
from edge.files import atomic_write_bytes, write_new_bytes
from edge.ratelimit import RateLimitedLog
from edge.strict import Strict

log = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
_KEY_LINE = re.compile(r'^\s*(public|secret)-key\s*=\s*"([^"]*)"\s*$')
KEY_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class SecurityConfig(Strict):
    """`[security]` of the daemon's config: CURVE on the PUB socket and the control endpoint."""

    curve: bool = False  # off: plain TCP, for a closed cell network; on: encrypted, allow-listed clients
    server_secret_key: str = ""  # the daemon's NAME.key_secret (from `ssae edge keys`)
    allowed_clients: str = ""  # folder of clients' NAME.key files, or one file of Z85 keys, one a line

    def __post_init__(self) -> None:
        if self.curve and not (self.server_secret_key and self.allowed_clients):
            raise ValueError(
                "security.curve = true needs security.server_secret_key (the daemon's .key_secret file) "
                "and security.allowed_clients (folder of client .key files); create keys with `ssae edge keys`"
            )


class ClientSecurityConfig(Strict):
    """CURVE settings of a subscriber or control client (the adapter's `[daemon.security]`)."""

    curve: bool = False  # must match the daemon's security.curve
    client_secret_key: str = ""  # this client's NAME.key_secret; its NAME.key goes into the daemon's allow-list
    server_public_key: str = ""  # the daemon's NAME.key (public half only)

    def __post_init__(self) -> None:
        if self.curve and not (self.client_secret_key and self.server_public_key):
            raise ValueError(
                "security.curve = true needs client_secret_key (this client's .key_secret file) and "
                "server_public_key (the daemon's .key file); create keys with `ssae edge keys`"
            )


class KeyPair(msgspec.Struct, frozen=True, kw_only=True):
    public: bytes  # 40 bytes of Z85 text, as zmq socket options take them
    secret: bytes

    def __repr__(self) -> str:  # never print a secret into a log or a traceback
        return f"KeyPair(public={self.public.decode()!r}, secret=<hidden>)"


class KeyFiles(msgspec.Struct, frozen=True, kw_only=True):
    public: Path
    secret: Path


# --- key files ----------------------------------------------------------------------------------


def create_key_pair(directory: Path, name: str, *, force: bool = False) -> KeyFiles:
    """Write NAME.key (mode 0644) and NAME.key_secret (mode 0600) into `directory`.

    Refuses to replace an existing file unless `force`: a replaced server key locks out every client
    until they get the new public key, and a replaced client key drops it from every allow-list.
    """
    if not KEY_NAME.match(name):
        raise UserError(f"key name {name!r} may hold only letters, digits, '_', '-' and '.'; pick another --name")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = KeyFiles(public=directory / f"{name}{PUBLIC_SUFFIX}", secret=directory / f"{name}{SECRET_SUFFIX}")
    if not force:
        for path in (files.public, files.secret):
            if path.exists():
                raise UserError(f"{path} exists; keep it, choose another --name, or pass --force to replace it")
    public, secret = zmq.curve_keypair()
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    # Secret first: a crash between the two leaves no public key that has no secret behind it.
    write_key_file(files.secret, _zpl(name, stamp, public, secret), mode=0o600, force=force)
    write_key_file(files.public, _zpl(name, stamp, public, None), mode=0o644, force=force)
    return files


def _zpl(name: str, stamp: str, public: bytes, secret: bytes | None) -> bytes:
    kind = "public" if secret is None else "SECRET"
    lines = [
        f"#   ZeroMQ CURVE {kind} certificate {name!r}, written by `ssae edge keys` at {stamp}",
        "#   public: give it to the peer (the daemon's allow-list, or the clients' server_public_key)."
        if secret is None
        else "#   SECRET: keep on this machine only, readable by the service user alone (mode 0600).",
        "",
        "metadata",
        "curve",
        f'    public-key = "{public.decode()}"',
    ]
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return ("\n".join(lines) + "\n").encode()


def write_key_file(path: Path, data: bytes, *, mode: int, force: bool) -> None:
    """Atomic write with the final mode set before any byte lands; without `force`, never replaces."""
    try:
        (atomic_write_bytes if force else write_new_bytes)(path, data, mode=mode)
    except FileExistsError:
        raise UserError(f"{path} exists; keep it, choose another --name, or pass --force to replace it") from None


def _read_keys(path: Path) -> tuple[bytes | None, bytes | None]:
    """(public, secret) from a ZPL certificate; either may be None when absent."""
    found: dict[str, bytes] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        m = _KEY_LINE.match(line)
        if m:
            found[m.group(1)] = _check_z85(m.group(2), f"{path}:{n}")
    return found.get("public"), found.get("secret")


def _check_z85(text: str, where: str) -> bytes:
    key = text.strip().encode()
    try:
        ok = len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, KeyError, IndexError):
        ok = False
    if not ok:
        raise UserError(f"{where}: {text.strip()[:12]!r}... is not a 40-character Z85 CURVE key; recreate it with `ssae edge keys`")
    return key


def load_key_pair(secret_file: str | Path) -> KeyPair:
    """A key pair from NAME.key_secret; warns when the file is readable by others."""
    path = Path(secret_file)
    public, secret = _read_keys(path)
    if public is None or secret is None:
        raise UserError(f"{path} holds no public-key and secret-key pair; point to the NAME.key_secret file from `ssae edge keys`")
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by group or others; chmod 600 it so only the service user can read the secret", path)
    return KeyPair(public=public, secret=secret)


def load_public_key(file: str | Path) -> bytes:
    """The public key of NAME.key (or of NAME.key_secret, whose public half it also holds)."""
    public, _ = _read_keys(Path(file))
    if public is None:
        raise UserError(f"{file} holds no public-key line; point to a NAME.key file from `ssae edge keys`")
    return public


def load_allowed_keys(location: str | Path) -> frozenset[bytes]:
    """Client public keys from a folder of *.key files, or from one file (a certificate, or Z85 keys one a line).

In a key-per-line file, lines starting with '#' and text after a key and a space are comments.

    An empty allow-list is refused: with CURVE on it would lock every client out without a word.
    """
    path = Path(location)
    keys: set[bytes] = set()
    if path.is_dir():
        for file in sorted(path.glob(f"*{PUBLIC_SUFFIX}")):
            keys.add(load_public_key(file))
    else:
        text = path.read_text(encoding="utf-8", errors="replace")  # FileNotFoundError names the path
        if any(_KEY_LINE.match(line) for line in text.splitlines()):
            keys.add(load_public_key(path))
        else:
            for n, line in enumerate(text.splitlines(), 1):
                # '#' is a Z85 character, so a comment is a line whose first word is not 40 long and
                # starts with '#'; anything after the key and a space is a comment too.
                words = line.split()
                if not words or (len(words[0]) != 40 and words[0].startswith("#")):
                    continue
                keys.add(_check_z85(words[0], f"{path}:{n}"))
    if not keys:
        raise UserError(f"allow-list {path} holds no client public keys; copy the clients' NAME.key files into it")
    return frozenset(keys)


# --- sockets ------------------------------------------------------------------------------------


def secure_server_socket(sock: zmq.Socket, server_keys: KeyPair) -> None:
    """Make `sock` a CURVE server. Call before bind: the options apply to later binds only."""
    sock.curve_secretkey = server_keys.secret
    sock.curve_publickey = server_keys.public
    sock.curve_server = True


def secure_client_socket(sock: zmq.Socket, client_keys: KeyPair, server_public: bytes) -> None:
    """Make `sock` a CURVE client of the server with `server_public`. Call before connect."""
    sock.curve_secretkey = client_keys.secret
    sock.curve_publickey = client_keys.public
    sock.curve_serverkey = server_public


ClientHook = Callable[[zmq.Socket], None]  # configures a client socket before connect (subscriber, control client)
ServerHook = Callable[[zmq.Socket, str], None]  # (socket, role): configures a bound socket before bind


def curve_client(client_secret_file: str | Path, server_public_file: str | Path) -> ClientHook:
    """The one client-side CURVE set-up: a hook from `ssae edge keys` files, loaded now so a bad file fails
    before any socket exists. Used by the subscriber library, tap, calibrate, the adapters and the control client."""
    keys, server = load_key_pair(client_secret_file), load_public_key(server_public_file)
    return lambda sock: secure_client_socket(sock, keys, server)


def curve_client_from_files(client_secret_file: Path | None, server_public_file: Path | None, *, flags: str = "--client-key/--server-key") -> ClientHook | None:
    """For commands with both key options: None when neither is given, a hook when both are, an error otherwise."""
    if client_secret_file is None and server_public_file is None:
        return None
    if client_secret_file is None or server_public_file is None:
        raise UserError(f"CURVE needs both key files ({flags}): your NAME.key_secret and the daemon's public NAME.key")
    return curve_client(client_secret_file, server_public_file)


def client_secure(cfg: ClientSecurityConfig) -> ClientHook | None:
    """The client hook a config asks for (adapters); None when CURVE is off."""
    return curve_client(cfg.client_secret_key, cfg.server_public_key) if cfg.curve else None


# --- the ZAP authenticator ----------------------------------------------------------------------


class _ZapHandler(ThreadAuthenticator):
    """pyzmq's ZAP handler, noting the peer address of the request being decided (for the refusal log)."""

    address = ""  # requests are decided one at a time, in the handler's thread

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self.address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        await super().handle_zap_message(msg)


class _AllowList:
    """Answers the authenticator's question "is this client key allowed?" (called in its thread)."""

    def __init__(self, keys: frozenset[bytes], location: Path, address: Callable[[], str]) -> None:
        self.keys = keys  # replaced whole by reload(); reading one attribute is atomic
        self.location = location
        self.address = address
        self.refusals = RateLimitedLog(log)  # a refused client retries every 100 ms: once a minute per key, with a count

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.keys
        if not allowed:
            self.refusals.log(
                key, logging.WARNING,
                "CURVE client %s from %s refused: its public key is not in the allow-list %s; add its NAME.key there and send SIGHUP",
                key.decode(errors="replace"), self.address(), self.location,
            )
        return allowed


class Authenticator:
    """The ZAP handler of one zmq.Context, admitting only allow-listed client keys.

    Lives as long as the daemon's CURVE sockets; stop it after closing them. `reload()` re-reads the
    allow-list, so a new client can be admitted (or one revoked for new connections) without a restart.
    """

    def __init__(self, ctx: zmq.Context, allowed_clients: str | Path) -> None:
        self.location = Path(allowed_clients)
        self._auth = _ZapHandler(ctx)
        self._allow = _AllowList(load_allowed_keys(self.location), self.location, lambda: self._auth.address)
        self._running = False

    @property
    def allowed(self) -> frozenset[bytes]:
        return self._allow.keys

    def start(self) -> None:
        self._auth.start()
        self._auth.configure_curve_callback(domain="*", credentials_provider=self._allow)
        self._running = True
        log.info("CURVE authenticator started: %d allowed client key(s) from %s", len(self._allow.keys), self.location)

    def reload(self) -> int:
        """Re-read the allow-list; a broken list keeps the old one in force and raises. Returns the count."""
        self._allow.keys = load_allowed_keys(self.location)
        log.info("CURVE allow-list reloaded: %d client key(s) from %s", len(self._allow.keys), self.location)
        return len(self._allow.keys)

    def stop(self) -> None:
        if self._running:
            self._auth.stop()
            self._running = False
            self._allow.refusals.flush()

    def __enter__(self) -> Authenticator:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_authenticator(ctx: zmq.Context, allowed_clients: str | Path) -> Authenticator:
    """Load the allow-list and start the ZAP handler on `ctx`; the caller stops it (`.stop()`)."""
    auth = Authenticator(ctx, allowed_clients)
    auth.start()
    return auth


class ServerSecurity:
    """CURVE for a daemon in one object: the server key pair plus its running authenticator."""

    def __init__(self, keys: KeyPair, auth: Authenticator) -> None:
        self.keys = keys
        self.auth = auth

    def secure(self, sock: zmq.Socket) -> None:
        secure_server_socket(sock, self.keys)

    def __call__(self, sock: zmq.Socket, role: str = "") -> None:
        """The ServerHook: pass the object itself as `secure=` to open_bound."""
        secure_server_socket(sock, self.keys)

    def stop(self) -> None:
        self.auth.stop()


def start_server_security(ctx: zmq.Context, cfg: SecurityConfig) -> ServerSecurity | None:
    """None when cfg.curve is off; otherwise load the keys and start the authenticator on `ctx`."""
    if not cfg.curve:
        return None
    keys = load_key_pair(cfg.server_secret_key)
    return ServerSecurity(keys, start_authenticator(ctx, cfg.allowed_clients))
