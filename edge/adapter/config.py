"""The Modbus adapter's config: one TOML file (configs/adapter/modbus.toml), decoded strictly.

Addresses are Modbus protocol addresses, counted from 0: the coil a PLC manual calls 00001 is 0 here,
holding register 40001 is 0. Unknown keys are refused so that a typo fails loudly instead of leaving a
coil at its default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import msgspec
from msgspec import Meta

from edge.adapter.handshake import COILS, REGISTERS, HandshakeConfig
from edge.errors import UserError
from edge.files import read_config_file
from edge.security import ClientSecurityConfig
from edge.strict import Strict

Address = Annotated[int, Meta(ge=0, le=65535)]
Millis = Annotated[float, Meta(ge=0, le=600_000)]
ENDPOINT_RE = re.compile(r"^(tcp|ipc|ws|wss)://\S+$")
T = TypeVar("T")


class StreamConfig(Strict, kw_only=True):
    """`[daemon]`: which daemon to follow and what counts as a healthy stream."""

    endpoint: str  # the daemon's publish endpoint, e.g. tcp://10.0.0.5:5555
    cameras: list[str] = []  # cameras whose parts pass this reject gate; empty = every camera
    missed_heartbeats: Annotated[int, Meta(ge=1, le=100)] = 3  # silence of this many heartbeat periods = inspector down
    first_heartbeat_s: Annotated[float, Meta(gt=0, le=3600)] = 10.0  # after start, wait this long for a first heartbeat
    recover_after_s: Annotated[float, Meta(ge=0, le=3600)] = 2.0  # after lost frames, the stream must be clean this long
    require_streaming: bool = True  # a camera of this gate that is not "streaming" makes inspection unavailable
    reject_unknown: bool = True  # a frame the daemon could not judge ("unknown") is rejected like a defect
    on_dropped: Literal["ignore", "reject", "unavailable"] = "ignore"  # frames the daemon itself dropped (header.dropped)
    # A frame in the uncertain band (verdict "review"): rejected like a defect (fail safe: someone looks at the part),
    # or passed ("pass": the band only flags parts, e.g. for the view's gallery)
    on_review: Literal["reject", "pass"] = "reject"
    security: ClientSecurityConfig = ClientSecurityConfig()
    control: str = ""  # the daemon's control endpoint (its [control].endpoint), for [handshake]; same security

    def __post_init__(self) -> None:
        if not ENDPOINT_RE.match(self.endpoint):
            raise ValueError(f"daemon.endpoint = {self.endpoint!r} is not a ZeroMQ endpoint; write it like tcp://127.0.0.1:5555")
        if self.control and not ENDPOINT_RE.match(self.control):
            raise ValueError(f"daemon.control = {self.control!r} is not a ZeroMQ endpoint; write it like tcp://127.0.0.1:5556")


class PlcConfig(Strict, kw_only=True):
    """`[plc]`: the Modbus TCP server (the PLC) and how hard to try reaching it."""

    host: str
    port: Annotated[int, Meta(ge=1, le=65535)] = 502
    device_id: Annotated[int, Meta(ge=0, le=255)] = 1  # the Modbus unit id
    timeout_s: Annotated[float, Meta(gt=0, le=30)] = 0.5  # per request and per connect attempt
    reconnect_min_s: Annotated[float, Meta(gt=0, le=600)] = 0.5  # first retry after a failure; doubles per failure
    reconnect_max_s: Annotated[float, Meta(gt=0, le=3600)] = 10.0  # retry delay cap
    queue_size: Annotated[int, Meta(ge=16, le=1_000_000)] = 4096  # commands between the stream and the PLC thread

    def __post_init__(self) -> None:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(f"plc.reconnect_min_s = {self.reconnect_min_s} exceeds plc.reconnect_max_s = {self.reconnect_max_s}; make the first delay the smaller one")


class EncoderConfig(Strict, kw_only=True):
    """`[reject.encoder]`: fire the pulse when the conveyor has moved `offset_counts` after the verdict."""

    register: Address  # where the PLC exposes the encoder count
    kind: Literal["holding", "input"] = "holding"  # holding register (FC3) or input register (FC4)
    words: Literal[1, 2] = 1  # 16-bit counter, or 32-bit in two registers
    word_order: Literal["high-first", "low-first"] = "high-first"  # for words = 2
    offset_counts: Annotated[int, Meta(ge=0, le=2**31 - 1)]  # counts between where the verdict arrives and the ejector
    poll_ms: Annotated[float, Meta(ge=1, le=1000)] = 5.0  # encoder read period while a pulse is pending

    def __post_init__(self) -> None:
        half = 1 << (16 * self.words - 1)  # beyond half the counter range a wrap and a reversal look alike
        if self.offset_counts >= half:
            raise ValueError(f"offset_counts = {self.offset_counts} needs a counter of more than {16 * self.words} bits; set words = 2 or a smaller offset (below {half})")


class RejectConfig(Strict, kw_only=True):
    """`[reject]`: the reject coil and its pulse."""

    coil: Address
    pulse_ms: Annotated[float, Meta(ge=1, le=60_000)] = 100.0
    delay_ms: Millis = 0.0  # wait between the reference moment and the pulse (camera-to-ejector travel)
    delay_from: Literal["capture", "receipt"] = "capture"  # reference: frame capture time (same clock/NTP) or arrival here
    overlap: Literal["extend", "queue"] = "extend"  # defects faster than pulse_ms: hold the coil on, or queue separate pulses
    min_gap_ms: Annotated[float, Meta(ge=1, le=60_000)] = 20.0  # "queue": off time between two pulses so the PLC sees two edges
    reject_all_when_unavailable: bool = False  # while inspection is unavailable, hold the reject coil on
    encoder: EncoderConfig | None = None  # present: position-based firing instead of delay_ms

    def __post_init__(self) -> None:
        if self.encoder is not None and self.delay_ms > 0:
            raise ValueError("reject.delay_ms and [reject.encoder] both set; use a time delay or an encoder offset, not both")


class OutputsConfig(Strict, kw_only=True):
    """`[outputs]`: status coils and registers the PLC reads. Absent registers are not written."""

    unavailable_coil: Address  # 1 = inspection unavailable: no heartbeat, lost frames, camera down, adapter stopping
    alive_coil: Address  # toggles with every heartbeat; a PLC watchdog on it catches a dead adapter too
    score_register: Address | None = None  # last image score x score_scale, 0..65534; 65535 = not judged
    threshold_register: Address | None = None  # image threshold in force, same scale
    score_scale: Annotated[float, Meta(gt=0)] = 1000.0  # register = round(score x scale), clamped to 0..65534
    defect_total_register: Address | None = None  # defects since adapter start, modulo 65536 (PLC takes differences)
    defect_window_register: Address | None = None  # defects among the last defect_window_frames judged frames
    defect_window_frames: Annotated[int, Meta(ge=1, le=100_000)] = 100
    status_register: Address | None = None  # bit field of reasons for "unavailable" (see edge.adapter.modbus.STATUS_BITS)


class AdapterConfig(Strict, kw_only=True):
    daemon: StreamConfig
    plc: PlcConfig
    reject: RejectConfig
    outputs: OutputsConfig
    handshake: HandshakeConfig | None = None  # absent: free-running (every frame of the gate's cameras is a part)

    def __post_init__(self) -> None:
        coils = {"reject.coil": self.reject.coil, "outputs.unavailable_coil": self.outputs.unavailable_coil, "outputs.alive_coil": self.outputs.alive_coil}
        hs = self.handshake
        if hs is not None:
            coils.update({f"handshake.coils+{i}" if i else "handshake.coils": hs.coils + i for i in range(COILS)})
            if not self.daemon.control:
                raise ValueError("[handshake] needs daemon.control, the daemon's control endpoint (its [control].endpoint), to send triggers and recipe choices")
            if self.daemon.cameras and hs.camera not in self.daemon.cameras:
                raise ValueError(f"handshake.camera = {hs.camera!r} is not in daemon.cameras ({', '.join(self.daemon.cameras)}); add it there or fix the name")
        _unique(coils, "coil")
        o = self.outputs
        regs = {
            f"outputs.{name}": getattr(o, name)
            for name in ("score_register", "threshold_register", "defect_total_register", "defect_window_register", "status_register")
            if getattr(o, name) is not None
        }
        enc = self.reject.encoder
        if enc is not None and enc.kind == "holding":
            for w in range(enc.words):
                regs[f"reject.encoder.register+{w}" if w else "reject.encoder.register"] = enc.register + w
        if hs is not None:
            regs.update({f"handshake.registers+{i}" if i else "handshake.registers": hs.registers + i for i in range(REGISTERS)})
        _unique(regs, "holding register")


def _unique(addresses: dict[str, int], kind: str) -> None:
    seen: dict[int, str] = {}
    for name, address in addresses.items():
        if address in seen:
            raise ValueError(f"{name} and {seen[address]} are both {kind} {address}; give each its own address")
        seen[address] = name


def load_adapter_config(path: str | Path) -> AdapterConfig:
    """Read and validate the adapter's TOML; failures are UserErrors naming file, field and fix."""
    return decode_config(path, AdapterConfig, "configs/adapter/modbus.toml")


def decode_config(path: str | Path, type: type[T], example: str) -> T:
    """Any adapter's TOML decoded strictly into `type`; `example` is the file the messages point to."""
    path = Path(path)
    text = read_config_file(path, example)
    try:
        return msgspec.toml.decode(text, type=type)
    except msgspec.ValidationError as e:  # a subclass of DecodeError: catch it first
        raise UserError(f"{path}: {_explain(str(e), example)}") from None
    except msgspec.DecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e}); fix that line") from None


def _explain(message: str, example: str = "configs/adapter/modbus.toml") -> str:
    """"Expected `int` >= 0 - at `$.reject.coil`" -> "reject.coil: expected int >= 0"."""
    what, sep, where = message.rpartition(" - at `")
    if not sep:  # a top-level problem carries no path
        what, where = message, "$`"
    field = where.rstrip("`").removeprefix("$").lstrip(".") or "(top level)"
    if m := re.match(r"Object missing required field `(\w+)`", what):
        name = f"{field}.{m[1]}" if field != "(top level)" else m[1]
        return f"{name} is missing; add it (see {example})"
    if m := re.match(r"Object contains unknown field `(\w+)`", what):
        name = f"{field}.{m[1]}" if field != "(top level)" else m[1]
        return f"{name} is not a known key; remove it or fix the spelling (see {example})"
    return f"{field}: {what[0].lower()}{what[1:]}"
