"""systemd's notify protocol: READY=1, WATCHDOG=1, STOPPING=1 as datagrams to $NOTIFY_SOCKET.

A few lines of socket code rather than a dependency. Without $NOTIFY_SOCKET (not run by systemd, or
Type=simple) every call does nothing. With WatchdogSec= set, systemd exports $WATCHDOG_USEC and kills
the service if WATCHDOG=1 does not arrive in time; the daemon pings at half that period, and only
while its threads are alive.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("edge.sdnotify")


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is a socket in the abstract namespace: the kernel wants a leading NUL byte.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog_for_us = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.watchdog_s: float | None = int(usec) / 2e6 if watchdog_for_us else None  # ping at half the timeout
        self.failed = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *states: str) -> bool:
        """Send "KEY=value" lines in one datagram; False when not under systemd or the send failed."""
        if not self.address:
            return False
        message = "\n".join(states).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message)
            self.failed = False
            return True
        except OSError as e:
            # systemd gone or socket unwritable: keep running, and say so once rather than at every ping
            if not self.failed:
                log.warning("sd_notify to %s failed: %s", self.address.replace("\0", "@"), e)
            self.failed = True
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")
