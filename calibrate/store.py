"""Write a calibration into a bundle's manifest atomically, keeping the previous ones as history.

Only `calibration` and `history` change; the model, its id and the provenance are untouched. The write
goes through edge.manifest.write_manifest (temp file in the bundle folder, fsync, rename), so after a
crash or a power cut the bundle holds either the old manifest or the new one, never half of either.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from edge.errors import UserError
from edge.manifest import Calibration, Manifest, read_manifest, write_manifest


def store_calibration(bundle_dir: Path, calibration: Calibration, *, model_id: str) -> Manifest:
    """Make `calibration` current and append the one it replaces to history; returns the new manifest.

    model_id is the model the scores came from: if the bundle was swapped meanwhile, nothing is written.
    """
    manifest = read_manifest(bundle_dir)
    if manifest.model_id != model_id:
        raise UserError(
            f"{bundle_dir}/manifest.json now names model {manifest.model_id[:12]}…, but the samples were scored with "
            f"{model_id[:12]}…; the bundle changed while calibrating — run the calibration again"
        )
    history = list(manifest.history)
    if manifest.calibration is not None:
        history.append(manifest.calibration)
    updated = msgspec.structs.replace(manifest, calibration=calibration, history=history)
    write_manifest(bundle_dir, updated)
    return updated
