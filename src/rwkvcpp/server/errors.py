"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, and the app's
handlers that give every failure (a bad body, an unknown path, a crash) that shape."""

from __future__ import annotations

import json
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["OpenAIError", "bad_request", "as_openai_error", "client_gone", "install_error_handlers"]


class OpenAIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: Optional[str] = None, code: Optional[str] = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def as_openai_error(error: BaseException) -> OpenAIError:
    """What a failed job answers: its own OpenAIError, a 400 for a ValueError (arguments the
    engine refused), else a 500."""
    if isinstance(error, OpenAIError):
        return error
    if isinstance(error, ValueError):
        return OpenAIError(400, str(error))
    return OpenAIError(500, f"generation failed: {type(error).__name__}: {error}", type="server_error")


def client_gone() -> JSONResponse:
    """The answer to a non-streaming request whose client went away (nobody reads it)."""
    return JSONResponse(OpenAIError(499, "client closed the request").body(), status_code=499)


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "function-before"}


def _validation_message(exc: RequestValidationError) -> tuple[str, Optional[str]]:
    """pydantic's first complaint as ``(message, param)``, the param in OpenAI's dotted form."""
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    err = errors[0]
    loc = [str(part) for part in err.get("loc", ()) if part != "body"]
    kind = err.get("type", "")
    if kind == "json_invalid":
        reason = (err.get("ctx") or {}).get("error", "")
        position = f" at character {loc[0]}" if loc else ""
        return f"the request body is not valid JSON: {reason}{position}", None
    if not loc:
        if kind == "missing":
            return "the request needs a JSON body (Content-Type: application/json)", None
        return "the request body must be a JSON object (sent with Content-Type: application/json)", None
    # Unions report one error per alternative, with the alternative's type in the location
    # ('stop', 'str'): the field's own path ends before it.
    path = []
    for part in loc:
        if part.isdigit():
            path.append(f"[{part}]")
        elif "[" in part or part in _TYPE_NAMES:
            break
        else:
            path.append(("." if path else "") + part)
    param = "".join(path)
    msg = err.get("msg", "invalid value")
    if kind == "missing":
        msg = "this field is required"
    value = err.get("input")
    shown = ""
    if kind != "missing" and isinstance(value, (str, int, float, bool, type(None))):
        shown = f" (got {json.dumps(value)[:80]})"
    return f"{param}: {msg}{shown}", param


async def _openai_error(request: Request, exc: OpenAIError):
    return exc.response()


async def _validation_error(request: Request, exc: RequestValidationError):
    message, param = _validation_message(exc)
    code = "invalid_json" if "not valid JSON" in message else "invalid_value"
    return OpenAIError(400, message, param=param, code=code).response()


async def _http_error(request: Request, exc: StarletteHTTPException):
    messages = {404: f"no such endpoint: {request.method} {request.url.path}",
                405: f"method {request.method} is not allowed on {request.url.path}"}
    message = messages.get(exc.status_code, str(exc.detail))
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    code = {413: "request_too_large", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return OpenAIError(exc.status_code, message, type=kind, code=code, headers=exc.headers).response()


async def _internal_error(request: Request, exc: Exception):
    return OpenAIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(OpenAIError, _openai_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
