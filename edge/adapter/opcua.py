"""The OPC UA adapter: follow the daemon's stream, serve the inspector's results and state over OPC UA.

    ssae adapter opcua configs/adapter/opcua.toml

One thread runs an asyncio loop with the asyncua server (LGPL-3.0) and reads the subscriber without
blocking (edge.adapter.follow); the node tree is edge.adapter.opcua_tree. Security (configs/adapter/opcua.toml):

- policy Basic256Sha256, mode SignAndEncrypt, with the server's certificate and key; a client's
  application certificate must be in `trusted_clients` (or signed by a CA there), else its session is
  refused (BadCertificateUntrusted);
- identity: the client's certificate as the user (X509 token, checked against the same folder);
  anonymous sessions only with `allow_anonymous = true`; no user names or passwords;
- every session is read-only: writes and node management are refused whoever asks; method calls too,
  except Inspector.SelectRecipe (with daemon.control set) for the users `recipe_select` names.

Fail-safe: when heartbeats stop the inspector and every camera turn "unavailable" and the result values
turn UncertainLastUsableValue; when the adapter stops, it writes "unavailable" before closing the server.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto import uacrypto
from asyncua.crypto.permission_rules import USER_TYPES, PermissionRuleset, User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.ua.ua_binary import struct_from_binary
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509

from edge.adapter.follow import Inspector, open_subscriber
from edge.adapter.opcua_certs import certificate_uris
from edge.adapter.opcua_config import OpcuaAdapterConfig, OpcuaSecurityConfig, ServerConfig
from edge.adapter.opcua_tree import InspectorTree
from edge.client.control import send_request
from edge.client.subscriber import BadMessage, Subscriber
from edge.errors import UserError
from edge.security import client_secure
from edge.wire import SelectRecipe

log = logging.getLogger(__name__)

POLL_S = 0.01  # idle wait between non-blocking reads of the stream: bounds the added latency
BATCH = 200  # events read before the loop lets clients in again
WATCHDOG_EVERY_S = 1.0
# What a session may ask for: browse, read, subscribe. Not: Write, Call, node management, history updates.
_READ_ONLY = frozenset(ua.NodeId(i) for i in USER_TYPES) - {
    ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary),
    ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary),
}


_CALL = ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary)


class ReadOnlySessions(PermissionRuleset):
    """Only an activated session (its user known) may act, and only read; SelectRecipe for whom `callers` names."""

    def __init__(self, callers: str = "nobody") -> None:
        self.callers = callers  # "certificate" | "anyone" | "nobody"
        self.select_recipe: ua.NodeId | None = None  # set once the method exists

    def check_validity(self, user, action_type_id, body) -> bool:
        if user is None:
            return False
        if action_type_id == _CALL:
            return self._may_call(user, body)
        return action_type_id in _READ_ONLY

    def _may_call(self, user: User, body) -> bool:
        if self.select_recipe is None or self.callers == "nobody" or (self.callers == "certificate" and user.role is not UserRole.User):
            return False
        calls = struct_from_binary(ua.CallParameters, body.copy()).MethodsToCall  # a copy: the server decodes it again
        return all(c.MethodId == self.select_recipe for c in calls)


class TrustedUsers:
    """asyncua user manager: a user certificate must be trusted; anonymous only where allowed."""

    def __init__(self, trust: TrustStore | None, allow_anonymous: bool) -> None:
        self.trust, self.allow_anonymous = trust, allow_anonymous

    def get_user(self, iserver, username=None, password=None, certificate=None) -> User | None:
        if username is not None:
            return None  # no user-name tokens are offered; refuse one anyway
        if not certificate:  # an anonymous session on an unsecured channel (asyncua passes b"")
            return User(role=UserRole.Anonymous, name="anonymous") if self.allow_anonymous else None
        cert = x509.load_der_x509_certificate(certificate)
        if self.trust is None or not self.trust.is_trusted(cert):
            log.warning("OPC UA session refused: certificate %s is not trusted", cert.subject.rfc4514_string())
            return None
        return User(role=UserRole.User, name=cert.subject.rfc4514_string())


async def _load(what: str, loader: Callable, path: str):
    try:
        return await loader(path)
    except FileNotFoundError:
        raise UserError(f"server.security.{what} = {path!r}: no such file; create it (see the README's OPC UA section)") from None
    except (ValueError, TypeError) as e:  # not a certificate / key in PEM or DER
        raise UserError(f"server.security.{what} = {path!r} is not a {what.replace('_', ' ')} in PEM or DER ({e}); point to the right file") from None


async def _trust_store(sec: OpcuaSecurityConfig) -> TrustStore:
    folder = Path(sec.trusted_clients)
    if not folder.is_dir():
        raise UserError(f"server.security.trusted_clients = {sec.trusted_clients!r} is not a folder; create it and copy the clients' certificates into it")
    store = TrustStore([folder], [])
    try:
        await store.load()
    except ValueError as e:
        raise UserError(f"server.security.trusted_clients: a file in {folder} is not a certificate ({e}); remove it or fix it") from None
    return store


async def build_server(cfg: ServerConfig, rules: ReadOnlySessions | None = None) -> Server:
    """The asyncua server for `cfg`, initialised and secured, not yet listening. Files are checked first."""
    sec = cfg.security
    rules = rules or ReadOnlySessions()
    trust = cert = key = None
    if sec.policy == "Basic256Sha256":
        trust = await _trust_store(sec)
        cert = await _load("certificate", uacrypto.load_certificate, sec.certificate)
        key = await _load("private_key", uacrypto.load_private_key, sec.private_key)
        uris = certificate_uris(cert)
        if cfg.application_uri not in uris:  # clients check this and refuse the server otherwise
            found = ", ".join(uris) or "none"
            raise UserError(
                f"server.application_uri = {cfg.application_uri!r} is not in the certificate's subjectAltName "
                f"(it names {found}); set it to that URI or reissue the certificate"
            )
    server = Server(user_manager=TrustedUsers(trust, sec.allow_anonymous))
    await server.init()
    server.set_endpoint(cfg.endpoint)
    server.set_server_name(cfg.name)
    await server.set_application_uri(cfg.application_uri)
    server.product_uri = "urn:ssae:adapter:opcua"
    tokens: list[type] = [ua.AnonymousIdentityToken] if sec.allow_anonymous else []
    if cert is not None:
        server.iserver.certificate, server.iserver.private_key = cert, key
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt], permission_ruleset=rules)
        options = CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
        server.set_certificate_validator(CertificateValidator(options, trust))
        tokens.append(ua.X509IdentityToken)
    else:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity], permission_ruleset=rules)
    server.set_identity_tokens(tokens)
    return server


async def serve(cfg: OpcuaAdapterConfig, stop: threading.Event, notify: Callable[[str], None]) -> int:
    subscriber = open_subscriber(cfg.daemon)
    with subscriber:
        rules = ReadOnlySessions(cfg.server.security.recipe_select)
        server = await build_server(cfg.server, rules)
        ns = await server.register_namespace(cfg.server.namespace_uri)
        tree = InspectorTree(server, ns)
        await tree.build(cfg.daemon.cameras)
        if cfg.daemon.control and rules.callers != "nobody":
            rules.select_recipe = await tree.add_select_recipe(_recipe_caller(cfg))
        try:
            await server.start()
        except OSError as e:
            hint = "another process listens there; pick another port" if e.errno == errno.EADDRINUSE else "check the host and port"
            raise UserError(f"server.endpoint = {cfg.server.endpoint!r}: cannot listen ({e.strerror or e}); {hint}") from None
        try:
            log.info("opcua adapter: following %s, serving %s (namespace %s = ns=%d)", cfg.daemon.endpoint, cfg.server.endpoint, cfg.server.namespace_uri, ns)
            notify("READY=1")
            await _follow(subscriber, Inspector(cfg.daemon), tree, stop, notify)
            notify("STOPPING=1")
        finally:
            await server.stop()
    log.info("opcua adapter stopped: %s", subscriber.tally())
    return 0


def _recipe_caller(cfg: OpcuaAdapterConfig) -> Callable[[str], tuple[bool, str]]:
    """SelectRecipe's body: one control request (a thread of asyncua's executor waits for the bundle to load)."""
    configure = client_secure(cfg.daemon.security)

    def call(name: str) -> tuple[bool, str]:
        try:
            reply = send_request(cfg.daemon.control, SelectRecipe(name=name), timeout_s=60.0, configure=configure)
        except TimeoutError as e:
            return False, str(e)
        log.info("opcua: SelectRecipe(%r): %s", name, reply.message)
        return reply.ok, reply.message

    return call


async def _follow(subscriber: Subscriber, inspector: Inspector, tree: InspectorTree, stop: threading.Event, notify) -> None:
    next_watchdog_s = next_report_s = 0.0
    last_state = ""
    while not stop.is_set():
        events = 0
        while events < BATCH:
            ev = subscriber.receive(timeout_s=0)  # never blocks: the loop also serves the clients
            if ev is None:
                break
            events += 1
            if isinstance(ev, BadMessage):
                log.warning("bad message on %s: %s", ev.topic, ev.error)
            inspector.on_event(ev, time.monotonic())
        now = time.monotonic()
        view = inspector.view(now, subscriber.tally())
        await tree.write(view)
        if view.state != last_state:
            (log.info if view.state in ("ready", "busy") else log.warning)("inspector %s%s", view.state, f": {view.reason}" if view.reason else "")
            last_state = view.state
        if now >= next_watchdog_s:
            next_watchdog_s = now + WATCHDOG_EVERY_S
            notify("WATCHDOG=1")
        if now >= next_report_s:
            next_report_s = now + 60.0
            log.info("opcua adapter: %s; %s", view.state, subscriber.tally())
        await asyncio.sleep(0 if events == BATCH else POLL_S)
    inspector.stopping()
    await tree.write(inspector.view(time.monotonic(), subscriber.tally()))
    await asyncio.sleep(0.5)  # let subscribed clients receive "unavailable" before the server closes


def run_opcua_adapter(cfg: OpcuaAdapterConfig, stop: threading.Event, notify: Callable[[str], None] | None = None) -> int:
    """Serve until `stop` is set; returns the exit code. `notify` receives sd_notify states."""
    return asyncio.run(serve(cfg, stop, notify or (lambda state: None)))
