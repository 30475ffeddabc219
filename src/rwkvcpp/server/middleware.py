"""ASGI middleware in front of every route: the Host header (while bound to loopback), the API key
(for the API's paths) and the request size limit.

The Host check stops DNS rebinding: a web page on another site whose name is made to resolve to
127.0.0.1 would otherwise reach a loopback server from the visitor's browser, with the server
seeing its own address; the page's Host header gives it away.

Raw ASGI rather than FastAPI's middleware, so that an oversized body is refused as it arrives
(by its Content-Length, or while it streams in) instead of after it has been read whole.
"""

from __future__ import annotations

import asyncio
import hmac
import json

from fastapi import HTTPException

from .config import LOOPBACK_HOSTS, ServerConfig
from .errors import OpenAIError

__all__ = ["Guard", "LoadingGate"]

# Paths that need the API key when one is set (/health and the chat page never do).
PROTECTED = ("/v1", "/tokenize", "/detokenize", "/extras", "/metrics")  # /v1 holds /v1/states
DOCS = ("/docs", "/redoc", "/openapi.json", "/static-offline-docs")


class Guard:
    def __init__(self, app, config: ServerConfig):
        self.app = app
        self.config = config
        self._keys = [key.encode() for key in config.api_keys]
        self._protected = PROTECTED if config.public_docs else PROTECTED + DOCS
        self._hosts = {h.lower() for h in (*LOOPBACK_HOSTS, *config.allowed_hosts)} if config.loopback else None

    def _key_ok(self, token: bytes) -> bool:
        ok = False
        for key in self._keys:  # every key compared, in constant time each
            ok |= hmac.compare_digest(token, key)
        return ok

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {}
        for name, value in scope.get("headers", ()):
            headers.setdefault(name.lower(), value)
        if self._hosts is not None and _host_name(headers.get(b"host", b"")) not in self._hosts:
            return await _send(send, OpenAIError(
                400, "this server answers requests for localhost only (Host header not accepted; "
                     "rwkvcpp serve --allowed-host NAME adds a name)", code="invalid_host"))
        if self._keys and scope["path"].startswith(self._protected):
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not self._key_ok(token.strip()):
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
        body_done = False

        async def limited_receive():
            nonlocal received, body_done
            if body_done:  # later receives wait for a disconnect, as long as a stream lasts
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.config.body_timeout)
            except asyncio.TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within {self.config.body_timeout:g} s") \
                    from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large(limit))  # answered by the app's error handler
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)


class LoadingGate:
    """503 for the model's endpoints until the model is loaded (``app_state.engine`` set), with
    the load's error once it has failed; /health, /metrics, the docs and the chat page answer
    meanwhile, so that a load balancer or an orchestrator can tell "starting" from "down"."""

    GATED = ("/v1", "/tokenize", "/detokenize", "/extras")

    def __init__(self, app, app_state):
        self.app = app
        self.app_state = app_state

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.app_state.engine is None and scope["path"].startswith(self.GATED):
            error = self.app_state.load_error
            message = (f"the model failed to load: {error}" if error is not None
                       else "the model is loading; retry shortly")
            return await _send(send, OpenAIError(503, message, type="unavailable_error",
                                                 code="model_load_failed" if error is not None else "model_loading",
                                                 headers={"Retry-After": "5"}))
        await self.app(scope, receive, send)


def _host_name(host: bytes) -> str:
    """The name in a Host header, without the port ("[::1]:8000" -> "[::1]")."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[: text.find("]") + 1]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def _too_large(limit: int) -> str:
    return f"the request body is larger than this server's limit of {limit} bytes"


async def _send(send, error: OpenAIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (error.headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
