"""The PLC side of the Modbus adapter: one thread that owns the Modbus TCP connection.

The stream side never waits for the PLC. It hands over commands through a bounded queue without
blocking: the latest `Outputs` (status coils and registers, last one wins) and reject requests
(`TimedPulse`, `EncoderPulse`), which are never merged away. This thread folds them into the
desired state, then writes only what differs from what the PLC last acknowledged. After a
(re)connect everything is written again, because a restarted PLC starts from its own defaults.

We use pymodbus' synchronous client on purpose: one thread, one socket, every request bounded by
`plc.timeout_s` with no retries, so the worst stall of this thread is known and the stream side is
unaffected by it. Reconnects back off from `reconnect_min_s` to `reconnect_max_s`.

A pulse whose whole interval passes while the PLC is unreachable cannot be delivered; it is counted
(`missed_offline`) and logged. The PLC should watch the alive coil for that case: it stops toggling.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import msgspec
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

from edge.adapter.config import EncoderConfig, OutputsConfig, PlcConfig, RejectConfig
from edge.adapter.handshake import RESULTS_READY, TRIGGER_READY, DaemonRecipes, Handshake, Inputs, TriggerResult
from edge.adapter.pulse import PulseSchedule

log = logging.getLogger("edge.plc_link")  # the name log lines carried before edge/adapter/ existed

# Bits of outputs.status_register: why inspection is unavailable (0 = available). Part of the PLC contract.
STATUS_BITS = {
    "no_heartbeat": 1,  # no heartbeat for missed_heartbeats x period (or none yet since start)
    "lost_frames": 2,  # frames or heartbeats lost on the way (sequence gap); held for recover_after_s
    "camera_down": 4,  # a camera of this gate is not streaming, or the daemon does not report it
    "adapter_overflow": 8,  # the adapter's own queue to the PLC thread overflowed
    "daemon_dropped": 16,  # the daemon dropped frames and daemon.on_dropped = "unavailable"
    "adapter_stopped": 32,  # written once when the adapter stops
}
MAX_WAIT_S = 0.05  # longest idle wait: bounds how late a stop request or a reconnect attempt is noticed


class Outputs(msgspec.Struct, frozen=True, kw_only=True):
    """The steady outputs the stream side wants; the newest one replaces the previous."""

    unavailable: bool = True  # fail safe until the stream has proven healthy
    alive: bool = False
    reject_hold: bool = False  # hold the reject coil on (reject everything while unavailable)
    registers: dict[int, int] = {}  # holding register address -> value 0..65535


class TimedPulse(msgspec.Struct, frozen=True):
    start_s: float  # time.monotonic() at which the pulse should start


class EncoderPulse(msgspec.Struct, frozen=True):
    asked_s: float  # time.monotonic() when the verdict arrived; the offset counts from the next encoder read


Command = Outputs | TimedPulse | EncoderPulse | TriggerResult | DaemonRecipes


class LinkStats(msgspec.Struct, frozen=True, kw_only=True):
    connected: bool
    connects: int  # connections that answered a request (the first one included)
    failures: int  # failed connects and failed requests
    pulses: int
    late: int  # pulses asked to start in the past: latency exceeded the configured delay
    deferred: int  # "queue" policy: pulses started later to keep them apart
    missed_offline: int  # pulses that ended while the PLC was unreachable
    overflows: int  # commands refused because the queue was full


class _Encoder:
    """Pending position-based pulses (PLC thread only)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        self.cfg = cfg
        self.modulo = 1 << (16 * cfg.words)
        self.pending: list[list[int | None]] = []  # [base count or None until the next read]
        self.next_poll_s = 0.0

    def fired(self, count: int) -> int:
        """Resolve bases, return how many pending pulses have reached their offset at `count`."""
        fired = 0
        keep: list[list[int | None]] = []
        for entry in self.pending:
            if entry[0] is None:
                entry[0] = count
            travelled = (count - entry[0]) % self.modulo  # a counter wrap is just modular arithmetic
            if travelled >= self.cfg.offset_counts:
                fired += 1
            else:
                keep.append(entry)
        self.pending = keep
        return fired

    def decode(self, registers: list[int]) -> int:
        if self.cfg.words == 1:
            return registers[0]
        hi, lo = registers if self.cfg.word_order == "high-first" else registers[::-1]
        return (hi << 16) | lo


class PlcLink:
    """Thread "plc-link": Modbus TCP writes for one reject gate. Start, submit(), stop()."""

    def __init__(self, plc: PlcConfig, reject: RejectConfig, outputs: OutputsConfig, handshake: Handshake | None = None, answers=None) -> None:
        self.plc, self.reject_cfg, self.outputs_cfg = plc, reject, outputs
        self.handshake = handshake  # edge.adapter.handshake: polled and written by this thread
        self.answers = answers  # () -> list[ControlAnswer]: the daemon's replies to the handshake's requests
        self._read_refused = ""  # the last refused handshake read, said once
        self._queue: queue.Queue[Command] = queue.Queue(maxsize=plc.queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="plc-link", daemon=True)
        self._overflows = 0  # written by the stream thread only
        # PLC-thread state
        self._schedule = PulseSchedule(reject.pulse_ms / 1000, reject.overlap, reject.min_gap_ms / 1000)
        self._encoder = _Encoder(reject.encoder) if reject.encoder else None
        self._want = Outputs()
        self._written: dict[tuple[str, int], int] = {}  # ("coil"|"reg", address) -> last value the PLC acknowledged
        self._client: ModbusTcpClient | None = None
        self._confirmed = False  # the current connection has answered a request
        self._backoff_s = plc.reconnect_min_s
        self._next_connect_s = 0.0
        self._connects = self._failures = self._missed_offline = 0
        self._stats = self._make_stats()

    # -- stream side ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, command: Command) -> bool:
        """Hand over without blocking; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(command)
            return True
        except queue.Full:
            self._overflows += 1
            return False

    def stats(self) -> LinkStats:
        return self._stats  # replaced whole by the PLC thread: a consistent snapshot

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def overflows(self) -> int:
        return self._overflows

    def stop(self, timeout_s: float = 5.0) -> None:
        """Write the fail-safe state (unavailable on), close the connection, join the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("plc-link did not stop within %.1f s (PLC request stuck?)", timeout_s)

    def __enter__(self) -> PlcLink:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- PLC thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._take_commands(self._wait_s(time.monotonic()))
                now = time.monotonic()
                if self._client is None and now >= self._next_connect_s:
                    self._connect(now)
                if self._client is not None:
                    self._poll_encoder(now)
                    self._poll_handshake(now)
                    self._write_outputs(time.monotonic())
                else:
                    self._count_missed_offline(now)
                self._stats = self._make_stats()
            self._take_commands(0.0)
            self._write_final()
        except Exception:  # a bug here must not leave the gate silently unattended: say it loudly
            log.exception("plc-link crashed; the PLC sees the alive coil stop toggling")
            raise
        finally:
            self._disconnect()
            self._stats = self._make_stats()

    def _wait_s(self, now: float) -> float:
        until = min(self._schedule.next_change_s(now), now + MAX_WAIT_S)
        if self._encoder is not None and self._encoder.pending:
            until = min(until, self._encoder.next_poll_s)
        if self.handshake is not None:
            until = min(until, self.handshake.next_poll_s)
        return max(0.0, until - now)

    def _take_commands(self, wait_s: float) -> None:
        try:
            cmd = self._queue.get(timeout=wait_s) if wait_s > 0 else self._queue.get_nowait()
        except queue.Empty:
            return
        while True:
            now = time.monotonic()
            if isinstance(cmd, Outputs):
                self._want = cmd
            elif isinstance(cmd, TimedPulse):
                self._schedule.add(cmd.start_s, now)
            elif isinstance(cmd, TriggerResult):
                if self.handshake is not None:
                    self.handshake.on_result(cmd.header, now)
            elif isinstance(cmd, DaemonRecipes):
                if self.handshake is not None:
                    self.handshake.on_recipes(cmd)
            elif self._encoder is not None:
                self._encoder.pending.append([None])
            else:  # an encoder pulse without an encoder configured: fire now rather than never
                self._schedule.add(now, now)
            try:
                cmd = self._queue.get_nowait()
            except queue.Empty:
                return

    def _connect(self, now: float) -> None:
        client = ModbusTcpClient(self.plc.host, port=self.plc.port, timeout=self.plc.timeout_s, retries=0)
        if client.connect():
            self._client = client
            self._confirmed = False  # a TCP accept is not yet a PLC: the first answered request confirms it
            self._written.clear()  # the PLC may have restarted: write everything again
            if self.handshake is not None:
                self.handshake.reconnected()  # its coils as they are now are a baseline, not edges
            return
        client.close()
        self._failures += 1
        log.warning("PLC %s:%d unreachable; next try in %.1f s", self.plc.host, self.plc.port, self._backoff_s)
        self._retry_later(now)

    def _retry_later(self, now: float) -> None:
        self._next_connect_s = now + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self.plc.reconnect_max_s)

    def _answered(self) -> None:
        """A request got a reply: the link works, so the next failure starts the backoff from the bottom."""
        if not self._confirmed:
            self._confirmed = True
            self._connects += 1
            self._backoff_s = self.plc.reconnect_min_s
            log.info("PLC %s:%d connected", self.plc.host, self.plc.port)

    def _disconnect(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _lost(self, what: str, error: Exception) -> None:
        self._failures += 1
        log.warning("PLC %s:%d: %s failed (%s); reconnecting in %.1f s", self.plc.host, self.plc.port, what, error, self._backoff_s)
        self._disconnect()
        self._retry_later(time.monotonic())

    def _desired(self, now: float) -> dict[tuple[str, int], int]:
        o, w = self.outputs_cfg, self._want
        want = {
            ("coil", self.reject_cfg.coil): int(self._schedule.active(now) or w.reject_hold),  # first: time-critical
            ("coil", o.unavailable_coil): int(w.unavailable),
            ("coil", o.alive_coil): int(w.alive),
        }
        want.update((("reg", a), v) for a, v in w.registers.items())
        if self.handshake is not None:
            want.update(self.handshake.desired(available=not w.unavailable))  # last: results_ready after its registers
        return want

    def _write_outputs(self, now: float) -> None:
        for (kind, address), value in self._desired(now).items():
            if self._written.get((kind, address)) == value:
                continue
            if not self._write(kind, address, value):
                return

    def _write(self, kind: str, address: int, value: int) -> bool:
        assert self._client is not None
        try:
            if kind == "coil":
                reply = self._client.write_coil(address, bool(value), device_id=self.plc.device_id)
            else:
                reply = self._client.write_register(address, value, device_id=self.plc.device_id)
        except (ModbusException, OSError) as e:  # pymodbus lets a reset socket's OSError through
            self._lost(f"writing {kind} {address}", e)
            return False
        self._answered()
        if reply.isError():
            # The PLC refused (wrong address, read-only area): a config error, not a link error. Say so once
            # per value and carry on with the other outputs.
            log.error("PLC refused %s %d = %d (%s); check the address in the adapter config", kind, address, value, reply)
        self._written[(kind, address)] = value
        return True

    def _poll_encoder(self, now: float) -> None:
        enc = self._encoder
        if enc is None or not enc.pending or now < enc.next_poll_s:
            return
        enc.next_poll_s = now + enc.cfg.poll_ms / 1000
        assert self._client is not None
        read = self._client.read_holding_registers if enc.cfg.kind == "holding" else self._client.read_input_registers
        try:
            reply = read(enc.cfg.register, count=enc.cfg.words, device_id=self.plc.device_id)
        except (ModbusException, OSError) as e:  # pymodbus lets a reset socket's OSError through
            self._lost(f"reading encoder register {enc.cfg.register}", e)
            return
        self._answered()
        if reply.isError():
            log.error("PLC refused to read encoder register %d (%s); check reject.encoder.register", enc.cfg.register, reply)
            return
        t = time.monotonic()
        for _ in range(enc.fired(enc.decode(list(reply.registers)))):
            self._schedule.add(t, t)

    def _poll_handshake(self, now: float) -> None:
        """Read the PLC's trigger, ack and recipe inputs when due; feed them, the daemon's answers and the time in."""
        hs = self.handshake
        if hs is None:
            return
        for answer in self.answers() if self.answers else []:
            hs.on_answer(answer, now)
        if now >= hs.next_poll_s:
            hs.next_poll_s = now + hs.cfg.poll_ms / 1000
            assert self._client is not None
            c, d = hs.cfg, self.plc.device_id
            try:
                coils = self._client.read_coils(c.coils, count=2, device_id=d)
                regs = None if coils.isError() else self._client.read_holding_registers(c.registers, count=1 + c.part_id_words, device_id=d)
            except (ModbusException, OSError) as e:  # pymodbus lets a reset socket's OSError through
                self._lost(f"reading the handshake inputs (coil {c.coils}, register {c.registers})", e)
                return
            self._answered()
            refused = coils if coils.isError() else regs if regs.isError() else None
            if refused is not None:
                if str(refused) != self._read_refused:
                    log.error("PLC refused to read the handshake inputs (%s); check handshake.coils / handshake.registers", refused)
                    self._read_refused = str(refused)
                return
            self._read_refused = ""
            hs.on_inputs(Inputs(bool(coils.bits[0]), bool(coils.bits[1]), regs.registers[0], list(regs.registers[1:])), now, not self._want.unavailable)
        hs.tick(now)

    def _count_missed_offline(self, now: float) -> None:
        missed = self._schedule.drop_ended(now)
        if missed:
            self._missed_offline += missed
            log.error("%d reject pulse(s) could not reach the unreachable PLC", missed)

    def _write_final(self) -> None:
        """On stop: inspection unavailable; the reject coil as the config wants it while unavailable."""
        if self._client is None:
            self._connect(time.monotonic())
        if self._client is None:
            return
        self._written.clear()
        final = self._desired(float("inf"))  # no pulse is active after the end of time
        final[("coil", self.reject_cfg.coil)] = int(self.reject_cfg.reject_all_when_unavailable)
        final[("coil", self.outputs_cfg.unavailable_coil)] = 1
        if self.handshake is not None:  # no trigger is taken, and no result served, once stopped
            final[("coil", self.handshake.cfg.coils + TRIGGER_READY)] = 0
            final[("coil", self.handshake.cfg.coils + RESULTS_READY)] = 0
        if self.outputs_cfg.status_register is not None:
            key = ("reg", self.outputs_cfg.status_register)
            final[key] = final.get(key, 0) | STATUS_BITS["adapter_stopped"]
        for (kind, address), value in final.items():
            if not self._write(kind, address, value):
                return

    def _make_stats(self) -> LinkStats:
        s = self._schedule
        return LinkStats(
            connected=self._client is not None,
            connects=self._connects,
            failures=self._failures,
            pulses=s.pulses,
            late=s.late,
            deferred=s.deferred,
            missed_offline=self._missed_offline,
            overflows=self._overflows,
        )
