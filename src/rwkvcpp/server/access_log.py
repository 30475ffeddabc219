"""Structured access logs: one JSON object per request on the ``rwkvcpp.access`` logger (``rwkvcpp
serve --access-log json``), for log shippers (Loki, Elasticsearch, CloudWatch) that would
otherwise parse uvicorn's text lines.

A record is written when the response has ended (a stream when it closes), with::

    {"time": "2026-12-03T07:01:02.345Z", "client": "127.0.0.1", "method": "POST",
     "path": "/v1/chat/completions", "status": 200, "duration_ms": 812.4, "bytes": 2351,
     "user_agent": "OpenAI/Python 1.99.0"}

``status`` is null when the client went away before a response started. Query strings are left
out: they may carry what a client did not mean to have logged.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone

__all__ = ["AccessLog", "logger", "log_to_stderr"]

logger = logging.getLogger("rwkvcpp.access")


def log_to_stderr() -> None:
    """Sends the records to stderr, one per line, unless the application configured the logger."""
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


class AccessLog:
    """Raw ASGI middleware: sees the status as it is sent and the bytes as they go."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.time()
        clock = time.perf_counter()
        status = None
        sent = 0

        async def watching_send(message):
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            headers = dict(scope.get("headers") or ())
            client = scope.get("client")
            logger.info(json.dumps({
                "time": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "client": client[0] if client else None,
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round((time.perf_counter() - clock) * 1000, 1),
                "bytes": sent,
                "user_agent": headers.get(b"user-agent", b"").decode("latin-1") or None,
            }))
