"""The page's side of the evidence colour scale (edge/overlay.py): its legend, and the map a frame carries.

The scale itself (stops, colours, dequantising) lives in edge/overlay.py, shared with the daemon's archive and
`ssae edge tap --save`, so the page, the archive and the tap colour alike.
"""

from __future__ import annotations

import numpy as np

from edge.client.subscriber import decode_mask
from edge.overlay import STOPS


def wire_map(info, data: bytes | None) -> np.ndarray | None:
    """The anomaly map a frame's mask part carries, as float32 (H, W); None when it is a binary mask or empty.

    The wire's quantised map (schema 2): `MaskInfo.kind == "map"`, `MaskInfo.map_scale` (anomaly units per
    code step) and `MaskInfo.map_offset`; the bytes are laid out as `encoding` says (raw or png, 8-bit,
    height x width). A schema-1 MaskInfo has none of these, so its frames take the binary-mask path.
    """
    if getattr(info, "kind", "mask") != "map" or not data:
        return None
    return decode_mask(info, data)  # the subscriber library's decoding: the one for every client


def legend() -> list[dict]:
    """The stops for the page's legend (the same numbers the server colours with)."""
    return [{"ratio": s[0], "rgba": [s[1], s[2], s[3], round(s[4] / 255, 3)]} for s in STOPS]
