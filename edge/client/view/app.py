"""The view's web app (Starlette): one page, its three static files, a server-sent event stream, pictures, marks.

    GET  /                                  the page (static/index.html, view.js, view.css: no CDN, no build)
    GET  /events                            text/event-stream: a `snapshot` event every tick (state.py's dict)
    GET  /api/config                        colour-scale stops, history length, whether gallery/marking are on
    GET  /live/<camera>/overlay.png         the latest frame's overlay (rendered on request, cached per frame)
    GET  /api/rejects                       the gallery: recent archive rejects, with their marks
    GET  /archive/<camera>/<stem>/overlay.png   one archive entry's overlay
    POST /api/mark  {"id", "label"}         copy an archive entry into the review folder (review.py)

Plain `def` handlers run in Starlette's thread pool, so rendering and file access never block the event
loop that serves the streams. Safety: on loopback the Host header must name loopback (a web page that
rebinds its domain to 127.0.0.1 gets nothing); POSTs must be same-origin JSON (no cross-site form can mark);
the page's Content-Security-Policy allows only its own origin.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import cv2
import msgspec
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from edge.client.subscriber import decode_mask
from edge.client.view.gallery import Gallery
from edge.client.view.review import LABELS, MarkRefused, Review
from edge.client.view.scale import legend, wire_map
from edge.client.view.state import ViewState, finite
from edge.overlay import encode_png, render_overlay

STATIC = Path(__file__).with_name("static")
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
CSP = "default-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
log = logging.getLogger("edge.view")


class LiveRenders:
    """The latest frame's overlay per camera, rendered once per frame however many pages ask."""

    def __init__(self, state: ViewState, gallery: Gallery | None):
        self.state, self.gallery = state, gallery
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple, bytes]] = {}

    def png(self, camera: str) -> bytes | None:
        live = self.state.latest(camera)
        if live is None:
            return None
        h = live.header
        photo = self.gallery.frame_path(h.camera, h.capture_ns, h.seq) if self.gallery else None
        key = (live.version, photo is not None)  # the archive may write the frame just after it was published
        with self._lock:
            hit = self._cache.get(camera)
        if hit is not None and hit[0] == key:
            return hit[1]
        image = cv2.imread(str(photo), cv2.IMREAD_UNCHANGED) if photo is not None else None
        mask = amap = None
        try:
            amap = wire_map(h.mask, live.mask)
            if amap is None:  # mask_kind "both": the map travels as a fourth part, described by header.map
                amap = wire_map(h.map, live.map)
            mask = decode_mask(h.mask, live.mask) if amap is None else None
        except ValueError as e:
            log.warning("%s seq %d: mask not drawn: %s", h.camera, h.seq, e)
        png = encode_png(render_overlay(h, mask=mask, amap=amap, image=image))
        with self._lock:
            self._cache[camera] = (key, png)
        return png


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


def _same_origin_json(request: Request) -> str | None:
    """Why a POST is refused, or None: it must be JSON (a cross-site form cannot send that) from this origin."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return "send the mark as application/json"
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower():
        return f"origin {origin} is not this page's"
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return "cross-site request"
    return None


def build_app(
    state: ViewState,
    *,
    gallery: Gallery | None = None,
    review: Review | None = None,
    stopping: Callable[[], bool] = lambda: False,
    loopback: bool = True,
    tick_s: float = 0.25,
    gallery_size: int = 48,
) -> Starlette:
    renders = LiveRenders(state, gallery)

    def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})

    def config(request: Request) -> Response:
        return JSONResponse({"scale": legend(), "history_s": state.history_s, "gallery": gallery is not None,
                             "review": review is not None, "labels": list(LABELS), "tick_s": tick_s})

    async def events(request: Request) -> Response:
        async def stream():
            cursor = 0
            yield "retry: 1000\n\n"  # the browser reconnects after a second if the stream breaks
            while not stopping():
                body, cursor = state.snapshot(cursor)
                yield "event: snapshot\ndata: " + msgspec.json.encode(body).decode() + "\n\n"
                await anyio.sleep(tick_s)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    def live_overlay(request: Request) -> Response:
        png = renders.png(request.path_params["camera"])
        return _png(png) if png is not None else Response("no frame from this camera yet", status_code=404)

    def rejects(request: Request) -> Response:
        if gallery is None:
            return JSONResponse({"enabled": False, "items": []})
        items = []
        for e in gallery.recent(gallery_size):
            h = e.header
            items.append({"id": e.id, "camera": h.camera, "seq": h.seq, "capture_ns": h.capture_ns, "model_id": h.model_id,
                          "verdict": h.verdict, "score": finite(h.score), "threshold": finite(h.threshold),
                          "regions": len(h.regions), "mark": review.mark_of(e) if review else None})
        return Response(msgspec.json.encode({"enabled": True, "review": review is not None, "items": items}), media_type="application/json")

    def archive_overlay(request: Request) -> Response:
        if gallery is None:
            return Response("no archive given (--archive)", status_code=404)
        try:
            e = gallery.entry(f"{request.path_params['camera']}/{request.path_params['stem']}")
        except LookupError as err:
            return Response(str(err), status_code=404)
        return _png(gallery.overlay_png(e))

    async def mark(request: Request) -> Response:
        refused = _same_origin_json(request)
        if refused:
            return JSONResponse({"error": refused}, status_code=403)
        if gallery is None or review is None:
            return JSONResponse({"error": "marking needs --archive and --review"}, status_code=409)
        try:
            body = json.loads(await request.body())
            eid, label = str(body["id"]), str(body["label"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'send {"id": "<camera>/<stem>", "label": "false_reject" | "confirmed"}'}, status_code=400)
        try:
            e = gallery.entry(eid)
            done = await anyio.to_thread.run_sync(review.mark, e, label)
        except LookupError as err:
            return JSONResponse({"error": str(err)}, status_code=404)
        except MarkRefused as err:
            return JSONResponse({"error": str(err)}, status_code=409)
        log.info("marked %s %s -> %s", eid, label, done.path)
        return Response(msgspec.json.encode(done), media_type="application/json")

    routes = [
        Route("/", index),
        Route("/events", events),
        Route("/api/config", config),
        Route("/api/rejects", rejects),
        Route("/api/mark", mark, methods=["POST"]),
        Route("/live/{camera}/overlay.png", live_overlay),
        Route("/archive/{camera}/{stem}/overlay.png", archive_overlay),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS)] if loopback else []
    return Starlette(routes=routes, middleware=middleware)
