"""The MQTT bridge's config: one TOML file (configs/adapter/mqtt.toml), decoded strictly.

Unknown keys are refused, so a typo (say `result_retian = true`) fails at start instead of silently
publishing with a default nobody chose.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from msgspec import Meta

from edge.adapter.config import decode_config
from edge.adapter.follow import FollowConfig
from edge.strict import Strict

EXAMPLE = "configs/adapter/mqtt.toml"
Qos = Literal[0, 1, 2]
TOPIC_RE = re.compile(r"^[^/#+\s][^#+\s]*[^/#+\s]$|^[^/#+\s]$")  # no wildcards, no spaces, no leading/trailing '/'


class TlsConfig(Strict, kw_only=True):
    """`[broker.tls]`: present = connect over TLS (port 8883 by convention)."""

    ca_file: str = ""  # the CA that signed the broker's certificate (PEM); "" = the system's CAs
    cert_file: str = ""  # this bridge's client certificate (PEM), for brokers that require one
    key_file: str = ""  # its private key (PEM, mode 0600)

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("broker.tls.cert_file and broker.tls.key_file go together; set both (client certificate) or neither")


class BrokerConfig(Strict, kw_only=True):
    """`[broker]`: the MQTT broker and how hard to try reaching it."""

    host: str
    port: Annotated[int, Meta(ge=1, le=65535)] = 1883
    client_id: Annotated[str, Meta(min_length=1)] = "ssae-bridge"  # unique per broker; up to 23 characters suit every broker
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    keepalive_s: Annotated[int, Meta(ge=2, le=3600)] = 10  # the broker declares the bridge dead (last will) after 1.5x this
    username: str = ""
    password_file: str = ""  # a file whose first line is the password (mode 0600): the config may be world-readable
    tls: TlsConfig | None = None
    reconnect_min_s: Annotated[float, Meta(gt=0, le=600)] = 0.5  # first retry after losing the broker; doubles per failure
    reconnect_max_s: Annotated[float, Meta(gt=0, le=3600)] = 10.0  # retry delay cap
    queue_size: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000  # QoS 1/2 messages kept while the broker is away

    def __post_init__(self) -> None:
        if self.password_file and not self.username:
            raise ValueError("broker.password_file needs broker.username; set the user the broker knows the password of")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(f"broker.reconnect_min_s = {self.reconnect_min_s} exceeds broker.reconnect_max_s = {self.reconnect_max_s}; make the first delay the smaller one")


class PublishConfig(Strict, kw_only=True):
    """`[publish]`: topics, QoS and retain. Topics: <topic_prefix>/<camera>/result and <topic_prefix>/state."""

    topic_prefix: str  # e.g. "ssae/line1"
    result_qos: Qos = 0  # 0: newest first, a result lost while the broker is away is counted; 1/2: queued and resent
    result_retain: bool = False  # true: a new subscriber gets each camera's last result at once
    state_qos: Qos = 1
    state_retain: bool = True  # a subscriber that connects later still learns the state (and the last will)

    def __post_init__(self) -> None:
        if not TOPIC_RE.match(self.topic_prefix):
            raise ValueError(
                f"publish.topic_prefix = {self.topic_prefix!r} is not a topic prefix; write it like \"ssae/line1\" "
                "(no '+', '#' or spaces, no leading or trailing '/')"
            )


class MqttBridgeConfig(Strict, kw_only=True):
    daemon: FollowConfig
    broker: BrokerConfig
    publish: PublishConfig


def load_mqtt_config(path: str | Path) -> MqttBridgeConfig:
    """Read and validate the bridge's TOML; failures are UserErrors naming file, field and fix."""
    return decode_config(path, MqttBridgeConfig, EXAMPLE)
