"""Load a bundle and verify it before anything runs on it."""

from __future__ import annotations

from pathlib import Path

import msgspec

from edge.files import sha256_file
from edge.manifest import MODEL_NAME, BundleError, Manifest, read_manifest


class Bundle(msgspec.Struct, frozen=True, kw_only=True):
    path: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_NAME

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def engines_dir(self) -> Path:
        return self.path / "engines"


def load_bundle(path: str | Path) -> Bundle:
    """Read the manifest, check the format version and that model.onnx is the one it names."""
    path = Path(path)
    manifest = read_manifest(path)
    model = path / MODEL_NAME
    if not model.is_file():
        raise BundleError(f"bundle refused: {model} is missing; copy the whole bundle folder or re-export it")
    digest = sha256_file(model)
    if digest != manifest.model_id:
        raise BundleError(
            f"bundle refused: {model} sha256 {digest[:12]}… differs from manifest.model_id "
            f"{manifest.model_id[:12]}…; the file is corrupt or foreign: copy the bundle again or re-export it"
        )
    for name, want in manifest.extras.items():
        extra = path / name
        if extra.is_file() and sha256_file(extra) != want:
            raise BundleError(f"bundle refused: {extra} does not match its sha256 in manifest.extras; re-export the bundle")
    return Bundle(path=path, manifest=manifest)
