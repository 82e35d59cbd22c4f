"""What every `ssae` command shares: known errors become one stderr line and exit code 2."""

from __future__ import annotations

import contextlib
import logging
import sys

import msgspec
import typer

from edge.manifest import BundleError


class UserError(Exception):
    """An error caused by input the user can fix; the message says how."""


KNOWN_ERRORS = (UserError, BundleError, msgspec.ValidationError, msgspec.DecodeError, FileNotFoundError, PermissionError, NotADirectoryError)


def fail(message: str, code: int = 2) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code=code)


@contextlib.contextmanager
def known_errors():
    """Turn the errors a user can fix into one line on stderr and exit code 2; Ctrl-C into exit 130."""
    try:
        yield
    except KNOWN_ERRORS as e:
        raise fail(str(e)) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise typer.Exit(code=130) from None


LOG_LEVELS = ("debug", "info", "warning", "error")


def setup_logging(log_level: str) -> None:
    """Log to stderr at the named level (the `--log-level` option of every long-running command)."""
    if log_level.lower() not in LOG_LEVELS:
        raise UserError(f"--log-level {log_level!r} is unknown; use {', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]}")
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
