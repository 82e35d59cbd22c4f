"""The operator view as a running thing: the subscriber thread plus uvicorn serving the app.

`serve()` is the command's foreground run (uvicorn handles SIGINT/SIGTERM); `start()`/`stop()` run the
same in a background thread for tests and embedding. The listening socket is bound in the constructor,
so a taken port is a one-line error before anything starts.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from edge.client.subscriber import SocketHook
from edge.client.view.app import build_app
from edge.client.view.feed import Feed
from edge.client.view.gallery import Gallery
from edge.client.view.review import Review
from edge.client.view.state import ViewState
from edge.errors import UserError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_folders(archive: Path | None, review: Path | None) -> None:
    """The review folder must lie outside the archive: the daemon deletes what it finds there by quota."""
    if archive is not None and not Path(archive).is_dir():
        raise UserError(f"--archive {archive} is not a folder; pass the daemon's [archive] dir")
    if archive is not None and review is not None:
        a, r = Path(archive).resolve(), Path(review).resolve()
        if r == a or r.is_relative_to(a) or a.is_relative_to(r):
            raise UserError(f"--review {review} overlaps --archive {archive}; keep marked frames in a folder of their own (the archive's quota deletes old files)")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); choose another --port, or a --host of this box") from None
    sock.listen(64)
    return sock


class ViewServer:
    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        archive: Path | None = None,
        review: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
        history_s: float = 300.0,
        configure: SocketHook | None = None,
        tick_s: float = 0.25,
    ):
        check_folders(archive, review)
        self.state = ViewState(history_s=history_s)
        self.gallery = Gallery(archive) if archive is not None else None
        self.review = Review(review) if review is not None else None
        self.feed = Feed(self.state, endpoints, configure=configure)
        self.stop_event = threading.Event()
        self.app = build_app(self.state, gallery=self.gallery, review=self.review, stopping=self._stopping,
                             loopback=is_loopback(host), tick_s=tick_s)
        self.sock = bind(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        # Open event streams end within a tick of should_exit (see _stopping), so shutdown waits little.
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=3)
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def _stopping(self) -> bool:
        return self.stop_event.is_set() or self.server.should_exit

    def serve(self) -> None:
        """Run in the foreground until SIGINT (KeyboardInterrupt after a clean stop) or SIGTERM (returns)."""
        self.feed.start()
        # uvicorn stops on SIGTERM, then re-raises it to the handler it found: make that one a no-op, exit 0.
        signal.signal(signal.SIGTERM, lambda *_: None)
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.stop_event.set()
            self.feed.stop()
            self.feed.join(2.0)
            self.sock.close()

    def start(self, timeout_s: float = 10.0) -> None:
        self.feed.start()
        self.thread = threading.Thread(name="view-http", target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        for _ in range(int(timeout_s / 0.05)):
            if self.server.started:
                return
            self.stop_event.wait(0.05)
        raise RuntimeError(f"the view's web server did not start within {timeout_s:g} s")

    def stop(self, timeout_s: float = 5.0) -> bool:
        self.stop_event.set()
        self.server.should_exit = True
        self.feed.stop()
        clean = self.feed.join(timeout_s)
        if self.thread is not None:
            self.thread.join(timeout_s)
            clean &= not self.thread.is_alive()
        self.sock.close()
        return clean

    def __enter__(self) -> ViewServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
