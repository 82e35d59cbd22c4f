"""Where `ssae train fit --out` may write, and which files of an old bundle are ssae's to replace.

`--out` is accepted only when it is absent, an empty folder, or a bundle that ssae wrote (its
manifest.json decodes as ours); never the training data, a folder inside it, or one above it. The
checkpoint folder beside it (OUT.work/) follows the same rule. Replacing a bundle removes only what
ssae wrote into it (model, manifest, extras, TensorRT engines, the calibration report); anything else
in the folder is the user's and stays, linked into the new bundle. A bundle calibrated on site is
replaced only with --force, and its calibration then stays in the new manifest's history.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import secrets
import shutil
import signal
import stat
import sys
import zipfile
from pathlib import Path

import msgspec

from edge.errors import UserError
from edge.manifest import MANIFEST_NAME, MODEL_NAME, BundleError, Calibration, Manifest, read_manifest

PROVISIONAL_SOURCE = "training holdout"  # Calibration.source of the threshold `train fit` sets from held-out images
REPORT_NAME = "calibration-report.png"  # what `ssae calibrate fit` writes into the bundle by default
ENGINE_PATTERNS = ("*.plan", "*.json", "timing-*.cache")  # edge/backends/engine_cache.py: plans, their sidecars, timing caches


def is_provisional(cal: Calibration) -> bool:
    return cal.source == PROVISIONAL_SOURCE or "provisional" in cal.method


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_not_data(label: str, path: Path, data: Path) -> None:
    """Refuse a write target that is the training data, inside it, or above it; label names it ("--out X")."""
    p, d = path.resolve(), data.resolve()
    if p == d:
        raise UserError(f"{label} is the training data folder; pass an --out outside it, e.g. {d.parent / (d.name + '-bundle')}")
    if _inside(p, d):
        raise UserError(f"{label} is inside the training data {data}; pass an --out outside it")
    if _inside(d, p):
        raise UserError(f"{label} contains the training data {data}; pass an --out beside it, not above it")


def old_bundle(out: Path) -> Manifest | None:
    """The manifest of the bundle at out, None when out is absent or an empty folder; refuses anything else."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return None
    if out.is_symlink() or not out.is_dir():
        raise UserError(f"--out {out} is {'a symlink' if out.is_symlink() else 'a file'}; pass a new or empty folder, or a bundle folder ssae wrote")
    if not any(out.iterdir()):
        return None
    if not (out / MANIFEST_NAME).is_file():
        raise UserError(f"--out {out} holds files but no {MANIFEST_NAME}, so it is not an ssae bundle: "
                        "pass a new or empty folder, or a bundle folder ssae wrote")
    try:
        return read_manifest(out)
    except BundleError as e:
        raise UserError(f"--out {out} is not a bundle this ssae can replace ({e}); pass a new or empty folder") from None


def check_out(out: Path, data: Path, ckpt: Path, *, force: bool) -> Manifest | None:
    """Every refusal before training starts, so that nothing is written; returns the bundle to be replaced.

    ckpt: the checkpoint file in the folder beside out (OUT.work/ckpt.pt), which training overwrites.
    """
    work = ckpt.parent
    check_not_data(f"--out {out}", out, data)
    check_not_data(f"the checkpoint folder {work} (beside --out)", work, data)
    if work.exists() and not work.is_dir():
        raise UserError(f"{work} is a file, but checkpoints go into that folder beside --out: move the file or pick another --out")
    if ckpt.exists() and not (ckpt.is_file() and zipfile.is_zipfile(ckpt)):  # torch.save writes a zip archive
        raise UserError(f"{ckpt} is not a checkpoint ssae wrote, and training would overwrite it: move it or pick another --out")
    manifest = old_bundle(out)
    cal = manifest.calibration if manifest else None
    if cal is not None and not is_provisional(cal) and not force:
        raise UserError(f"--out {out} holds a bundle calibrated on site ({cal.method}, {cal.created or 'undated'}); retraining replaces "
                        "that calibration with a provisional one: pass --force to replace it (the site calibration stays in the "
                        "manifest history), or choose another --out")
    return manifest


def carried_history(manifest: Manifest | None, note: str) -> tuple[list[Calibration], Calibration | None]:
    """History for the new bundle: the old one's, plus its current calibration if that was a site one.

    The site calibration was fitted for the old model; `note` says so in the entry. Returns (history, kept).
    """
    if manifest is None:
        return [], None
    history = list(manifest.history)
    cal = manifest.calibration
    if cal is None or is_provisional(cal):
        return history, None
    kept = msgspec.structs.replace(cal, note=f"{cal.note} | {note}" if cal.note else note)
    return [*history, kept], kept


def owned_files(out: Path, manifest: Manifest) -> set[str]:
    """Paths (relative to out) of the files ssae wrote into this bundle; everything else is the user's."""
    names = {MANIFEST_NAME, MODEL_NAME, REPORT_NAME, *(n for n in manifest.extras if "/" not in n and n not in ("", ".", ".."))}
    owned = {n for n in names if (out / n).is_file() and not (out / n).is_symlink()}
    engines = out / "engines"
    if engines.is_dir() and not engines.is_symlink():
        for p in engines.iterdir():
            if p.is_file() and not p.is_symlink() and any(fnmatch.fnmatch(p.name, pat) for pat in ENGINE_PATTERNS):
                owned.add(f"engines/{p.name}")
    for p in out.iterdir():  # temp files an interrupted atomic write of ours left behind: .<name>.<random>.tmp
        if p.is_file() and p.name.endswith(".tmp") and any(p.name.startswith(f".{n}.") for n in names):
            owned.add(p.name)
    return owned


def carry_user_files(old: Path, new: Path, owned: set[str]) -> list[str]:
    """Hard-link (copy where links fail) every entry of old that ssae did not write into new; returns them.

    Links, not moves: until the swap the old bundle stays whole, and after it the user's files are in the new one.
    """
    carried = []
    for root, dirs, files in os.walk(old):
        rel_root = Path(root).relative_to(old)
        for d in list(dirs):
            src = Path(root) / d
            if src.is_symlink():  # walk does not follow it; recreate the link itself
                dirs.remove(d)
                files.append(d)
            elif str(rel_root / d) != "engines":  # engines/ is recreated only if something of the user's is in it
                (new / rel_root / d).mkdir(parents=True, exist_ok=True)
        for f in files:
            rel = rel_root / f
            if str(rel) in owned:
                continue
            src, dst = Path(root) / f, new / rel
            if dst.exists() or dst.is_symlink():  # a name the new bundle uses: it stays in the old folder, named at the end
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
            else:
                _link_or_copy(src, dst)
            carried.append(str(rel))
    return sorted(carried)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError:  # another file system, or links not allowed here: a copy keeps it just as well
        shutil.copy2(src, dst)


def sibling_dir(out: Path, tag: str) -> Path:
    """A new hidden folder beside out (same file system, so renames are atomic), made with the umask's mode."""
    for _ in range(100):
        path = out.parent / f".{out.name}.{tag}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not make a temporary folder beside {out}")


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT/SIGTERM from the first rename to the clean-up: a stop there would leave no bundle at out."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def swap_in(new: Path, out: Path, *, report_as: str | None = None) -> list[str]:
    """Put the finished bundle `new` at `out`, replacing only what ssae wrote there; returns the user's files kept.

    out is checked again (it may have changed while training). An old bundle's user files are linked into
    new first, then two renames swap the folders, so an interruption leaves either the old bundle or the
    new one, plus the hidden folder beside it. report_as: keep the old calibration report under that name.
    """
    manifest = old_bundle(out)
    if not out.exists():
        new.rename(out)
        return []
    os.chmod(new, stat.S_IMODE(out.stat().st_mode))  # the folder keeps the permissions it was given
    if manifest is None:  # an empty folder: rename replaces it atomically (and fails if it filled up meanwhile)
        new.rename(out)
        return []
    owned = owned_files(out, manifest)
    carried = carry_user_files(out, new, owned)
    if report_as and REPORT_NAME in owned:
        _link_or_copy(out / REPORT_NAME, new / report_as)
    old = sibling_dir(out, "old")
    with _signals_held():
        out.rename(old / out.name)
        new.rename(out)
        _remove_old(old / out.name, out, owned | set(carried))
    return carried


def _remove_old(old: Path, out: Path, known: set[str]) -> None:
    """Delete the old bundle's files: ssae's own, and the user's already linked into out; move any newcomer over.

    Whatever cannot be moved stays where it is, and the folder is named on stderr.
    """
    for root, dirs, files in os.walk(old, topdown=False):
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            src = Path(root) / name
            rel = str(src.relative_to(old))
            if rel in known:
                src.unlink()
            elif not (out / rel).exists() and not (out / rel).is_symlink():  # written while we swapped: the user's
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                src.rename(out / rel)
        for d in dirs:
            with contextlib.suppress(OSError):  # not empty: something in it stayed, said below
                (Path(root) / d).rmdir()
    try:
        old.rmdir()
        old.parent.rmdir()
    except OSError:
        print(f"warning: {old} still holds files that were not moved into {out}; look at them, then delete that folder", file=sys.stderr)
