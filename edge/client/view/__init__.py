"""The operator web view (`ssae edge view`): a subscriber of the wire with a page on top.

feed.py (the subscriber thread) -> state.py (latest frames, score history, heartbeats) -> app.py (Starlette:
page, event stream, overlays from edge/overlay.py (legend and wire maps: scale.py), gallery.py over the archive, review.py marks),
run by server.py (uvicorn). The page is static/: one .html, one .js, one .css.
"""
