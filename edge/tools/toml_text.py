"""TOML text for the configs the tools write (demo, bench): msgspec's TOML encoder needs tomli_w, not a dependency."""

from __future__ import annotations

import json


def to_toml(table: dict, prefix: str = "") -> str:
    """TOML for a config mapping (msgspec.toml.encode would need tomli_w). None means "leave the default"."""

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string is a valid TOML basic string
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items() if x is not None) + "}"
        raise TypeError(f"cannot write {v!r} as TOML")

    def is_tables(v) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    lines = [f"{k} = {value(v)}" for k, v in table.items() if v is not None and not isinstance(v, dict) and not is_tables(v)]
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in table.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out += f"\n[{name}]\n" + to_toml(v, prefix=f"{name}.")
        elif is_tables(v):
            for item in v:
                out += f"\n[[{name}]]\n" + to_toml(item, prefix=f"{name}.")
    return out
