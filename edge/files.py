"""Files the product writes: atomically (temp file, fsync, rename), and hashed (a bundle's model id).

After a power cut a reader finds the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write via temp file in the same folder, fsync, rename: after a crash the old file is intact."""
    _write(Path(path), data, replace=True, mode=mode)


def write_new_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Like atomic_write_bytes, but never replaces: FileExistsError when `path` exists (no check-then-write race)."""
    _write(Path(path), data, replace=False, mode=mode)


def _write(path: Path, data: bytes, *, replace: bool, mode: int | None) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; a manifest or an archive entry must stay readable by the daemon's user and the
        # operators, as a plain open() would have made it: the replaced file's mode, else 0666 less the umask.
        # A secret key passes its mode, set before any byte lands.
        os.fchmod(fd, _mode_for(path) if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the name exists
            os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without setting it (os.umask can only be read by changing it, racing other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


# Every still-image format OpenCV's imread decodes on every platform: the daemon, training, calibration and
# the tools read the same folders, so they must agree on what an image is.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly in `folder`, in name order (the order frames, training and reports use)."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_config_file(path: str | Path, example: str) -> bytes:
    """The bytes of a config file a person points a command at; `example` names the file to copy when it is missing."""
    from edge.errors import UserError

    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file; copy {example} and edit it") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder; pass the config file (a .toml)") from None
