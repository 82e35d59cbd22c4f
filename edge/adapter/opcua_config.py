"""The OPC UA adapter's config: one TOML file (configs/adapter/opcua.toml), decoded strictly.

Unknown keys are refused, so a typo (say `alow_anonymous = true`) fails at start instead of silently
leaving the server in a state nobody asked for.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from edge.adapter.config import decode_config
from edge.adapter.follow import FollowConfig
from edge.strict import Strict

EXAMPLE = "configs/adapter/opcua.toml"
OPC_ENDPOINT_RE = re.compile(r"^opc\.tcp://[^/:\s]+:\d{1,5}(/\S*)?$")


class OpcuaSecurityConfig(Strict, kw_only=True):
    """`[server.security]`: who may open a session, and over which channel."""

    policy: Literal["Basic256Sha256", "none"] = "Basic256Sha256"  # SignAndEncrypt; "none" only on a test bench
    certificate: str = ""  # the server's application instance certificate (DER or PEM)
    private_key: str = ""  # its private key (PEM or DER), readable by the service user only
    trusted_clients: str = ""  # folder of trusted client certificates (*.der / *.pem), or of the CAs that signed them
    allow_anonymous: bool = False  # true: a session needs no user certificate (channel security still applies)
    # Who may call Inspector.SelectRecipe (present when daemon.control is set): sessions whose user is a
    # trusted certificate, anyone with a session (anonymous ones too), or nobody.
    recipe_select: Literal["certificate", "anyone", "nobody"] = "certificate"

    def __post_init__(self) -> None:
        if self.policy == "Basic256Sha256":
            missing = [k for k in ("certificate", "private_key", "trusted_clients") if not getattr(self, k)]
            if missing:
                raise ValueError(
                    f"server.security.policy = Basic256Sha256 needs {', '.join('server.security.' + k for k in missing)}; "
                    "point them to the server's certificate, its key and the folder of trusted client certificates "
                    "(or set policy = \"none\" on a closed test bench)"
                )
        elif not self.allow_anonymous:
            raise ValueError(
                "server.security.policy = \"none\" with allow_anonymous = false lets nobody in (a user certificate "
                "needs a signed channel); set allow_anonymous = true for a test bench, or use policy = \"Basic256Sha256\""
            )


class ServerConfig(Strict, kw_only=True):
    """`[server]`: where the OPC UA server listens and how it names itself."""

    endpoint: str = "opc.tcp://0.0.0.0:4840/ssae/"  # host:port to bind (0.0.0.0 = every interface) and the path
    name: str = "ssae inspector"  # the application name clients show
    application_uri: str = "urn:ssae:inspector"  # must equal the URI in the server certificate's subjectAltName
    namespace_uri: str = "urn:ssae:inspection"  # the namespace of the inspector's nodes (its index is looked up by this)
    security: OpcuaSecurityConfig  # required: a server without it would have to guess how open to be

    def __post_init__(self) -> None:
        if not OPC_ENDPOINT_RE.match(self.endpoint):
            raise ValueError(f"server.endpoint = {self.endpoint!r} is not an OPC UA endpoint; write it like opc.tcp://0.0.0.0:4840/ssae/")
        port = int(self.endpoint.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        if not 1 <= port <= 65535:
            raise ValueError(f"server.endpoint port {port} is out of range; use 1..65535 (4840 is the OPC UA standard)")


class OpcuaAdapterConfig(Strict, kw_only=True):
    daemon: FollowConfig
    server: ServerConfig


def load_opcua_config(path: str | Path) -> OpcuaAdapterConfig:
    """Read and validate the OPC UA adapter's TOML; failures are UserErrors naming file, field and fix."""
    return decode_config(path, OpcuaAdapterConfig, EXAMPLE)
