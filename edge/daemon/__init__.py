"""The inspection daemon: capture, batch inference, judging, publishing, archive, metrics, control server.

A judged frame never leaves this package before it is published; clients live in edge/client/.
"""
