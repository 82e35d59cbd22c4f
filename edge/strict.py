"""The base of every struct we read from a file a person writes or keeps (config, manifest, engine records).

Immutable, keyword-only, and unknown keys refused: a typo in a config or a manifest from a newer format
fails with its path (`$.cameras[0].qeue`) instead of being ignored. Wire structs do not use it: an older
subscriber must keep reading messages that gained fields.
"""

from __future__ import annotations

import msgspec


class Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass
