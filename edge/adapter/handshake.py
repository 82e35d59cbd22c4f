"""The Modbus handshake: triggered inspection and product changeover, as the PLC sees them (map version 1).

    PLC: part id registers, then trigger coil 0->1
    adapter: trigger_ready 0; Trigger(camera, part_id) to the daemon's control endpoint
    daemon: the next frame that camera grabs carries part_id and trigger_id (edge/daemon/triggers.py)
    adapter: result registers, then results_ready 1, held until the PLC acknowledges
    PLC: reads the result, results_ack 0->1;  adapter: results_ready 0, trigger_ready 1

Coils from `coils` (PLC = the PLC writes, the adapter reads; adapter = the adapter writes):
    +0 trigger (PLC)   +1 results_ack (PLC)   +2 trigger_ready   +3 results_ready
    +4 missed_acquisition   +5 buffer_overrun
Holding registers from `registers`:
    +0 recipe_select (PLC: 1 = the daemon's first recipe; 0 = no wish)   +1..+8 part_id (PLC, part_id_words used)
    +10 map_version   +11 error_code   +12 active_recipe   +13 result_verdict   +14 result_score
    +15 result_recipe   +16 result_count   +17 triggers   +18 triggers_refused   +19 missed_acquisitions
    +20 buffer_overruns   +21..+28 result_part_id (the daemon's copy, part_id_words used)

Only rising edges count: a coil already at 1 when the adapter (re)connects is no trigger and no ack. A
trigger while one waits for its frame, or while a result waits for its ack, is refused and counted
(error 1): the result buffer is one deep, so nothing is overwritten unseen. A trigger no frame answers
within acquire_timeout_ms + result_timeout_ms sets missed_acquisition; a result not acknowledged within
ack_timeout_ms sets buffer_overrun and stays held. Both bits and the error code clear at the next
accepted trigger. The PLC thread (edge/adapter/plc_link.py) owns this object and its Modbus I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Literal, NamedTuple

import msgspec
from msgspec import Meta

from edge.strict import Strict
from edge.wire import FrameHeader, Reply, Request, SelectRecipe, Trigger

log = logging.getLogger("edge.handshake")

MAP_VERSION = 1
COILS = 6
TRIGGER, RESULTS_ACK, TRIGGER_READY, RESULTS_READY, MISSED_ACQUISITION, BUFFER_OVERRUN = range(COILS)
RECIPE_SELECT, PART_ID, PART_ID_MAX_WORDS = 0, 1, 8
(MAP_VERSION_REG, ERROR_CODE, ACTIVE_RECIPE, RESULT_VERDICT, RESULT_SCORE, RESULT_RECIPE, RESULT_COUNT,
 TRIGGERS, TRIGGERS_REFUSED, MISSED_ACQUISITIONS, BUFFER_OVERRUNS) = range(10, 21)  # fmt: skip
RESULT_PART_ID = 21
REGISTERS = RESULT_PART_ID + PART_ID_MAX_WORDS
# error_code values: part of the PLC contract (README "PLC handshake").
ERRORS = {
    "none": 0,
    "busy": 1,  # trigger while a trigger or a result was pending: refused
    "missed_acquisition": 2,  # no frame answered the trigger in time
    "buffer_overrun": 3,  # the result was not acknowledged within ack_timeout_ms
    "daemon_refused": 4,  # the daemon refused the trigger (camera failed, busy there); see the adapter log
    "no_answer": 5,  # the daemon's control endpoint did not answer
    "unavailable": 6,  # trigger while inspection was unavailable: refused
    "recipe_refused": 7,  # no such recipe number, or its bundle failed its checks: the running one stays
}
VERDICTS = {"ok": 1, "defect": 2, "unknown": 3, "review": 4}  # result_verdict; 0 = no result yet
Ms = Annotated[float, Meta(gt=0, le=600_000)]


class HandshakeConfig(Strict, kw_only=True):
    """`[handshake]`: triggered inspection and recipe selection on one camera. Absent: free-running."""

    camera: Annotated[str, Meta(pattern=r"^[a-z0-9_-]+$")]  # the daemon's camera the trigger inspects
    coils: Annotated[int, Meta(ge=0, le=65535 - COILS + 1)]  # first of the 6 handshake coils
    registers: Annotated[int, Meta(ge=0, le=65535 - REGISTERS + 1)]  # first of the 29 handshake holding registers
    triggered: bool = True  # false: recipe selection only; that camera's frames free-run as without a handshake
    part_id_words: Annotated[int, Meta(ge=1, le=PART_ID_MAX_WORDS)] = 2  # registers of the part id (+1 onwards)
    part_id_format: Literal["uint", "ascii"] = "uint"  # uint: one number, high word first; ascii: 2 chars a word, high byte first
    acquire_timeout_ms: Ms = 500.0  # the frame must be grabbed within this after the trigger reaches the daemon
    result_timeout_ms: Ms = 2000.0  # and its result arrive within this more (inference, network)
    ack_timeout_ms: Ms = 5000.0  # results_ready unacknowledged this long: buffer_overrun
    poll_ms: Annotated[float, Meta(ge=1, le=1000)] = 10.0  # how often the trigger, ack and recipe inputs are read
    control_timeout_s: Annotated[float, Meta(gt=0, le=600)] = 2.0  # per control request; a recipe load must fit in it


class Inputs(NamedTuple):
    """What the PLC wrote, as read in one poll."""

    trigger: bool
    ack: bool
    recipe: int
    part_words: list[int]


class ControlAnswer(NamedTuple):
    kind: Literal["trigger", "recipe"]
    request: Request
    reply: Reply | None  # None: no answer (error says why)
    error: str = ""


class TriggerResult(msgspec.Struct, frozen=True):
    """From the stream thread: a frame header that answers a trigger (trigger_id != 0)."""

    header: FrameHeader


class DaemonRecipes(msgspec.Struct, frozen=True):
    """From the stream thread: the daemon's recipes (heartbeat), for recipe numbers."""

    active: str
    names: tuple[str, ...]


def decode_part_id(words: list[int], fmt: str) -> str:
    if fmt == "uint":
        n = 0
        for w in words:
            n = (n << 16) | w
        return str(n)
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    return raw.split(b"\0", 1)[0].decode("ascii", "replace").rstrip()


def encode_part_id(text: str, words: int, fmt: str) -> list[int]:
    """The registers for a part id; a uint id that is not a number or does not fit is 0."""
    if fmt == "uint":
        n = int(text) if text.isdigit() else 0
        n = n if n < 1 << (16 * words) else 0
        return [(n >> (16 * (words - 1 - i))) & 0xFFFF for i in range(words)]
    raw = text.encode("ascii", "replace")[: 2 * words].ljust(2 * words, b"\0")
    return [int.from_bytes(raw[2 * i : 2 * i + 2], "big") for i in range(words)]


class Handshake:
    """The handshake's state (PLC thread only): inputs, results and answers in; coils and registers out."""

    def __init__(self, cfg: HandshakeConfig, score_register: Callable[[float], int], send: Callable[[str, Request], bool]):
        self.cfg = cfg
        self.score_register = score_register  # a score as a register value (the adapter's score_scale)
        self.send = send  # hands a request to the control link without blocking; False when it is full
        self.next_poll_s = 0.0
        self.phase: Literal["idle", "requesting", "acquiring", "holding"] = "idle"
        self.levels: Inputs | None = None  # None after a (re)connect: the next read is the baseline, not an edge
        self.recipe_asked: int | None = None
        self.pending_id = 0
        self.deadline_s = self.held_since_s = 0.0
        self.result: FrameHeader | None = None
        self.early: dict[int, FrameHeader] = {}  # results whose trigger's reply has not come yet
        self.error = 0
        self.missed_bit = self.overrun_bit = False
        self.results = self.triggers = self.refused = self.missed = self.overruns = 0
        self.recipes: tuple[str, ...] = ()
        self.active_recipe = ""

    # -- events ---------------------------------------------------------------------------------------
    def reconnected(self) -> None:
        self.levels = None

    def on_inputs(self, inputs: Inputs, now_s: float, available: bool) -> None:
        old, self.levels = self.levels, inputs
        if inputs.recipe != self.recipe_asked:  # a new wish (also the first one read); 0 = none, so 0 then n asks again
            self.recipe_asked = inputs.recipe
            if inputs.recipe and not self.send("recipe", SelectRecipe(number=inputs.recipe)):
                self._fail("no_answer", "recipe %d not asked for: the control link's queue is full", inputs.recipe)
        if old is None:
            return
        if self.cfg.triggered and inputs.trigger and not old.trigger:
            self._trigger(inputs, now_s, available)
        if inputs.ack and not old.ack and self.phase == "holding":
            self.phase = "idle"

    def _trigger(self, inputs: Inputs, now_s: float, available: bool) -> None:
        if not available or self.phase != "idle":
            self.refused += 1
            why = "inspection is unavailable" if not available else f"busy ({self.phase})"
            self._fail("unavailable" if not available else "busy", "trigger refused: %s", why)
            return
        part_id = decode_part_id(inputs.part_words, self.cfg.part_id_format)
        if not self.send("trigger", Trigger(camera=self.cfg.camera, part_id=part_id, timeout_ms=self.cfg.acquire_timeout_ms)):
            self._fail("no_answer", "trigger for part %s not sent: the control link's queue is full", part_id)
            return
        self.phase, self.early = "requesting", {}

    def on_answer(self, answer: ControlAnswer, now_s: float) -> None:
        reply = answer.reply
        if answer.kind == "recipe":
            if reply is None or not reply.ok:
                self._fail("recipe_refused", "recipe %s refused: %s", answer.request.number, reply.message if reply else answer.error)
            else:
                self.active_recipe = reply.recipe
            return
        if self.phase != "requesting":
            return
        if reply is None:
            self.phase = "idle"
            self._fail("no_answer", "trigger not confirmed: %s", answer.error)
        elif not reply.ok:
            self.phase, self.refused = "idle", self.refused + 1
            self._fail("daemon_refused", "the daemon refused the trigger: %s", reply.message)
        else:
            self.phase, self.pending_id, self.triggers = "acquiring", reply.trigger_id, self.triggers + 1
            self.deadline_s = now_s + (self.cfg.acquire_timeout_ms + self.cfg.result_timeout_ms) / 1000
            self.error, self.missed_bit, self.overrun_bit = 0, False, False
            if (early := self.early.pop(reply.trigger_id, None)) is not None:
                self.on_result(early, now_s)

    def on_result(self, header: FrameHeader, now_s: float) -> None:
        if self.phase == "acquiring" and header.trigger_id == self.pending_id:
            self.result, self.results = header, self.results + 1
            self.phase, self.held_since_s = "holding", now_s
        elif self.phase == "requesting":
            self.early = {**dict(list(self.early.items())[-3:]), header.trigger_id: header}  # the reply is on its way
        else:
            log.warning("camera %s: result of trigger %d (part %s) came after its time or for another client; ignored",
                        header.camera, header.trigger_id, header.part_id)  # fmt: skip

    def on_recipes(self, recipes: DaemonRecipes) -> None:
        self.recipes, self.active_recipe = recipes.names, recipes.active

    def tick(self, now_s: float) -> None:
        if self.phase == "acquiring" and now_s > self.deadline_s:
            self.phase, self.missed, self.missed_bit = "idle", self.missed + 1, True
            self._fail("missed_acquisition", "missed acquisition: no result for trigger %d within %g ms", self.pending_id,
                       self.cfg.acquire_timeout_ms + self.cfg.result_timeout_ms)  # fmt: skip
        elif self.phase == "holding" and not self.overrun_bit and now_s - self.held_since_s > self.cfg.ack_timeout_ms / 1000:
            self.overruns, self.overrun_bit = self.overruns + 1, True
            self._fail("buffer_overrun", "buffer overrun: the result of trigger %d was not acknowledged within %g ms; it stays held",
                       self.pending_id, self.cfg.ack_timeout_ms)  # fmt: skip

    def _fail(self, error: str, message: str, *args) -> None:
        self.error = ERRORS[error]
        log.warning("handshake %s: " + message, self.cfg.camera, *args)

    # -- outputs --------------------------------------------------------------------------------------
    def _number(self, recipe: str) -> int:
        return self.recipes.index(recipe) + 1 if recipe in self.recipes else 0

    def desired(self, available: bool) -> dict[tuple[str, int], int]:
        """Registers first, then the coils, results_ready last: a PLC that sees it finds the result in place."""
        r, c, h, words = self.cfg.registers, self.cfg.coils, self.result, self.cfg.part_id_words
        regs = {
            MAP_VERSION_REG: MAP_VERSION, ERROR_CODE: self.error, ACTIVE_RECIPE: self._number(self.active_recipe),
            RESULT_VERDICT: VERDICTS.get(h.verdict, VERDICTS["unknown"]) if h else 0,
            RESULT_SCORE: self.score_register(h.score) if h else self.score_register(float("nan")),
            RESULT_RECIPE: self._number(h.recipe) if h else 0, RESULT_COUNT: self.results % 65536,
            TRIGGERS: self.triggers % 65536, TRIGGERS_REFUSED: self.refused % 65536,
            MISSED_ACQUISITIONS: self.missed % 65536, BUFFER_OVERRUNS: self.overruns % 65536,
        }  # fmt: skip
        for i, word in enumerate(encode_part_id(h.part_id if h else "", words, self.cfg.part_id_format)):
            regs[RESULT_PART_ID + i] = word
        want = {("reg", r + offset): value for offset, value in regs.items()}
        ready = self.cfg.triggered and available and self.phase == "idle"
        want[("coil", c + TRIGGER_READY)] = int(ready)
        want[("coil", c + MISSED_ACQUISITION)] = int(self.missed_bit)
        want[("coil", c + BUFFER_OVERRUN)] = int(self.overrun_bit)
        want[("coil", c + RESULTS_READY)] = int(self.phase == "holding")
        return want
