"""ASGI middleware in front of every route: the API key (for the API's paths) and the request size
limit.

Raw ASGI rather than FastAPI's middleware, so that an oversized body is refused as it arrives
(by its Content-Length, or while it streams in) instead of after it has been read whole.
"""

from __future__ import annotations

import hmac
import json

from fastapi import HTTPException

from .config import ServerConfig
from .errors import OpenAIError

__all__ = ["Guard"]

# Paths that need the API key when one is set (/health, the chat page and the docs do not).
PROTECTED = ("/v1", "/tokenize", "/detokenize", "/extras", "/metrics")


class Guard:
    def __init__(self, app, config: ServerConfig):
        self.app = app
        self.config = config
        self._key = config.api_key.encode() if config.api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {}
        for name, value in scope.get("headers", ()):
            headers.setdefault(name.lower(), value)
        if self._key is not None and scope["path"].startswith(PROTECTED):
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
                message = ("Incorrect API key provided" if auth else
                           "Missing API key: send it as the header 'Authorization: Bearer <key>'")
                return await _send(send, OpenAIError(401, message, code="invalid_api_key",
                                                     headers={"www-authenticate": "Bearer"}))
        limit = self.config.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await _send(send, OpenAIError(400, "invalid Content-Length header"))
            if declared > limit:
                return await _send(send, OpenAIError(413, _too_large(limit), code="request_too_large"))
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large(limit))  # answered by the app's error handler
            return message

        await self.app(scope, limited_receive, send)


def _too_large(limit: int) -> str:
    return f"the request body is larger than this server's limit of {limit} bytes"


async def _send(send, error: OpenAIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (error.headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
