"""The OpenAI-compatible HTTP API over one model: ``create_app(model, config)`` -> FastAPI app.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both with ``stream``: server
sent events ``data: {...}`` ending with ``data: [DONE]``), ``POST /v1/embeddings``,
``GET /v1/models``, ``GET /health``, ``GET /`` (a chat page) and the OpenAPI docs at ``/docs``.

How a request runs:

* it is validated (400 in OpenAI's error shape ``{"error": {"message", "type", "param",
  "code"}}``), its prompt rendered and tokenized (in a thread);
* it is admitted to the :class:`Scheduler`: at most ``max_concurrent`` run at once on worker
  threads and ``max_queue`` more wait; beyond that the answer is 503;
* a worker evaluates it (the engine releases the GIL; one model serialises its evaluations, so
  concurrent generations interleave token by token) and passes each step to the event loop
  through an asyncio queue; the event loop never waits on the model;
* a client that goes away (a closed stream, or a dropped non-streaming request) cancels its job:
  the slot is free at once and the worker stops before its next token.

The state cache (:mod:`.state_cache`) keeps the state after each prompt minus its last token and
after each prompt plus its reply, so the next turn of a chat starts from the longest cached
prefix of its tokens.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import math
import secrets
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..generate import Generator
from ..sampling import SamplingParams
from .chat_format import ReplyStream, render_chat
from .config import ServerConfig
from .schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from .state_cache import StateCache

__all__ = ["create_app", "OpenAIError", "Scheduler", "ServerState"]

WEB_PAGE = Path(__file__).resolve().parent / "web" / "index.html"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# ---- errors ------------------------------------------------------------------------------------


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


def _bad(message: str, param: Optional[str] = None, code: Optional[str] = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def _error_json(status: int, message: str, type: str, code: Optional[str] = None, headers=()) -> tuple:
    body = json.dumps({"error": {"message": message, "type": type, "param": None, "code": code}}).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in headers]
    return status, raw_headers, body


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none", "function-after", "function-before"}


def _validation_message(exc: RequestValidationError) -> tuple[str, Optional[str]]:
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


# ---- scheduling ----------------------------------------------------------------------------------


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class Job:
    """One admitted request: the worker calls ``emit`` with each result, the event loop reads
    them from ``items``; ``cancel`` frees the slot at once and tells the worker to stop."""

    def __init__(self, scheduler: Scheduler, loop: asyncio.AbstractEventLoop):
        self.scheduler = scheduler
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.released = False

    def emit(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()
        self.scheduler._release(self)

    async def items(self, request: Optional[Request] = None, poll_seconds: float = 0.25):
        """The worker's results in order. With ``request``, a client that disconnects while
        this runs cancels the job (for non-streaming requests, which nothing else watches): the
        items then simply end."""
        watcher = asyncio.ensure_future(self._watch(request, poll_seconds)) if request is not None else None
        try:
            while True:
                item = await self.queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _watch(self, request: Request, poll_seconds: float) -> None:
        while not self.cancelled.is_set():
            await asyncio.sleep(poll_seconds)
            if await request.is_disconnected():
                self.cancel()
                self.queue.put_nowait(_END)
                return


class Scheduler:
    """Worker threads for evaluations, with a bounded number of requests admitted."""

    def __init__(self, max_concurrent: int, max_queue: int):
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._executor = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="rwkvcpp-worker")
        self._lock = threading.Lock()
        self.admitted = 0  # running or waiting, not yet released
        self.running = 0  # worker threads busy with a job (a cancelled one until it notices)
        self._jobs: weakref.WeakSet[Job] = weakref.WeakSet()

    def submit(self, work: Callable[[Job], None]) -> Job:
        """Admits ``work`` (run as ``work(job)`` on a worker thread) or raises a 503."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.admitted >= self.max_concurrent + self.max_queue:
                raise OpenAIError(
                    503,
                    f"the server is busy: {self.max_concurrent} requests are running and {self.max_queue} "
                    "waiting, the most it takes; retry shortly",
                    type="server_error", code="server_busy", headers={"Retry-After": "1"},
                )
            self.admitted += 1
        job = Job(self, loop)
        with self._lock:
            self._jobs.add(job)
        try:
            self._executor.submit(self._run, job, work)
        except RuntimeError:  # executor shut down
            self._release(job)
            raise OpenAIError(503, "the server is shutting down", type="server_error", code="shutting_down") from None
        return job

    def _run(self, job: Job, work: Callable[[Job], None]) -> None:
        started = False
        try:
            if job.cancelled.is_set():
                return
            with self._lock:
                self.running += 1
                started = True
            work(job)
        except BaseException as e:  # passed on to the request, which answers with it
            job.emit(_Failure(e))
        finally:
            if started:
                with self._lock:
                    self.running -= 1
            self._release(job)
            job.emit(_END)

    def _release(self, job: Job) -> None:
        with self._lock:
            if not job.released:
                job.released = True
                self.admitted -= 1

    def stats(self) -> dict:
        with self._lock:
            return {"running": self.running, "waiting": max(0, self.admitted - self.running),
                    "admitted": self.admitted, "max_concurrent": self.max_concurrent, "max_queue": self.max_queue}

    def shutdown(self) -> None:
        """Stops every job (each at its next token) and the workers."""
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancelled.set()
        self._executor.shutdown(wait=False, cancel_futures=True)


# ---- the server's state ------------------------------------------------------------------------


class ServerState:
    """What the endpoints share: the model, its generator and tokenizer, the state cache, the
    scheduler and counters. ``generator`` may be replaced (tests inject a scripted one)."""

    def __init__(self, model, config: ServerConfig):
        self.model = model
        self.config = config
        self.generator = Generator(model)
        self.tokenizer = self.generator.tokenizer
        self.model_id = config.model_name or Path(getattr(model, "path", "rwkv")).stem or "rwkv"
        self.created = int(time.time())
        # Token 0 ends a document in the World and 20B vocabularies; in a byte vocabulary it is a byte.
        self.end_tokens: tuple[int, ...] = () if self.tokenizer.name == "bytes" else (0,)
        self.cache = StateCache(config.cache_entries, config.cache_bytes)
        self.scheduler = Scheduler(config.max_concurrent, config.max_queue)
        self._stats_lock = threading.Lock()
        self.counters = {
            "requests": 0,
            "prompt_tokens": 0,  # prompt tokens of all requests
            "prompt_tokens_evaluated": 0,  # of those, the ones run through the model (not cached)
            "completion_tokens": 0,
            "embedding_tokens": 0,
        }

    def count(self, **amounts: int) -> None:
        with self._stats_lock:
            for name, amount in amounts.items():
                self.counters[name] += amount

    def stats(self) -> dict:
        with self._stats_lock:
            counters = dict(self.counters)
        return {**counters, "scheduler": self.scheduler.stats(), "cache": self.cache.stats()}

    # -- requests -> engine arguments --------------------------------------------------------

    def encode(self, text: str, param: str) -> list[int]:
        if len(text) > 64 * self.config.max_prompt_tokens:  # cheap bound before tokenizing
            self._too_long(None, param)
        ids = self.tokenizer.encode(text)
        self.check_tokens(ids, param)
        return ids

    def check_tokens(self, ids: list[int], param: str) -> None:
        if not ids:
            raise _bad(f"{param} is empty: there is nothing to read", param)
        if len(ids) > self.config.max_prompt_tokens:
            self._too_long(len(ids), param)
        n_vocab = self.model.n_vocab
        for t in ids:
            if not 0 <= t < n_vocab:
                raise _bad(f"{param} has the token id {t}, outside this model's vocabulary 0..{n_vocab - 1}", param)

    def _too_long(self, n: Optional[int], param: str):
        what = f"{n} tokens" if n is not None else "far too long"
        raise OpenAIError(400, f"{param} is {what}; this server reads at most {self.config.max_prompt_tokens} "
                               "tokens", param=param, code="context_length_exceeded")

    def sampling(self, req, extra_stop: tuple[str, ...] = ()) -> list[SamplingParams]:
        """One SamplingParams per choice (``n``), from a request's fields and the defaults."""
        cfg = self.config
        if req.n > cfg.max_n:
            raise _bad(f"n is {req.n}; this server gives at most {cfg.max_n} choices per request", "n")
        max_tokens = getattr(req, "max_completion_tokens", None)
        param = "max_completion_tokens"
        if max_tokens is None:
            max_tokens, param = req.max_tokens, "max_tokens"
        if max_tokens is None:
            max_tokens = cfg.default_max_tokens
        if max_tokens > cfg.max_tokens_cap:
            raise _bad(f"{param} is {max_tokens}; this server generates at most {cfg.max_tokens_cap} tokens "
                       "per request", param)
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > cfg.max_stop:
            raise _bad(f"stop has {len(stop)} strings; at most {cfg.max_stop} are allowed", "stop")
        if any(not s for s in stop):
            raise _bad("stop strings must not be empty", "stop")
        bias = {}
        for key, value in (req.logit_bias or {}).items():
            if not key.strip().isdigit() or int(key) >= self.model.n_vocab:
                raise _bad(f"logit_bias has the key {key!r}; keys are token ids 0..{self.model.n_vocab - 1}",
                           "logit_bias")
            if not -100 <= value <= 100 or math.isnan(value):
                raise _bad(f"logit_bias values must be in [-100, 100], got {value} for token {key}", "logit_bias")
            bias[int(key)] = -math.inf if value <= -100 else value  # -100 bans, as OpenAI documents
        defaults = cfg.sampling

        def pick(name):
            value = getattr(req, name)
            return defaults[name] if value is None else value

        seed = req.seed % (1 << 64) if req.seed is not None else None
        try:
            base = SamplingParams(
                temperature=pick("temperature"), top_p=pick("top_p"), top_k=pick("top_k"), min_p=pick("min_p"),
                presence_penalty=pick("presence_penalty"), frequency_penalty=pick("frequency_penalty"),
                penalty_decay=pick("penalty_decay"), count_prompt=bool(req.global_penalty),
                logit_bias=bias, stop_tokens=self.end_tokens,
                stop=tuple(dict.fromkeys(tuple(stop) + tuple(extra_stop))), seed=seed, max_tokens=max_tokens,
            )
        except ValueError as e:
            raise _bad(str(e), str(e).split(" ", 1)[0]) from None
        if seed is None:
            return [base] * req.n
        return [replace(base, seed=(seed + i) % (1 << 64)) for i in range(req.n)]

    # -- the worker's side -------------------------------------------------------------------

    def generate_work(self, prompts: list[list[int]], params: list[SamplingParams]) -> Callable[[Job], None]:
        """The job that generates ``len(params)`` choices for each prompt. It emits
        ``("prompt", prompt_index, cached_tokens)`` once per prompt, then
        ``("chunk", choice_index, text, finish_reason, completion_tokens)`` per token."""
        generator = self.generator  # as it is now, even if replaced while this runs

        def work(job: Job) -> None:
            for p, ids in enumerate(prompts):
                if job.cancelled.is_set():
                    return
                self._generate_one(job, generator, p, ids, params)

        return work

    def _generate_one(self, job: Job, generator, p: int, ids: list[int], params: list[SamplingParams]) -> None:
        model, cache = self.model, self.cache
        count_prompt = params[0].count_prompt
        use_cache = cache.max_entries > 0 and not count_prompt
        cached, state = cache.lookup(ids) if use_cache else (0, None)
        todo = ids[cached:]
        if use_cache and len(todo) > 1:
            # The prompt minus its last token: computed once for all n choices, and cached so that
            # a retry (or a prompt that goes on differently) starts here.
            state = _ingest(model, todo[:-1], state)
            cache.put(ids[:-1], state)
            self.count(prompt_tokens_evaluated=len(todo) - 1)
            todo = todo[-1:]
        elif not use_cache:
            todo, state = ids, None  # with global_penalty the sampler must see the whole prompt
        self.count(prompt_tokens=len(ids))
        job.emit(("prompt", p, cached))
        n = len(params)
        for i, choice_params in enumerate(params):
            if job.cancelled.is_set():
                return
            stream = generator.stream(todo, choice_params, state)
            self.count(prompt_tokens_evaluated=len(todo))
            try:
                for chunk in stream:
                    if job.cancelled.is_set():
                        return
                    result = chunk.result
                    tokens = getattr(result, "completion_tokens", 0) if result is not None else 0
                    if result is not None:
                        self.count(completion_tokens=tokens or 0)
                        if cache.max_entries > 0:
                            final = getattr(result, "state", None)
                            if isinstance(final, np.ndarray):
                                cache.put(list(ids) + list(result.tokens), final)
                    job.emit(("chunk", p * n + i, chunk.text, chunk.finish_reason, tokens))
            finally:
                stream.close()

    def embed_work(self, inputs: list[list[int]]) -> Callable[[Job], None]:
        model = self.model

        def work(job: Job) -> None:
            for i, ids in enumerate(inputs):
                if job.cancelled.is_set():
                    return
                vector, _ = model.embed(ids)
                self.count(embedding_tokens=len(ids))
                job.emit((i, vector, len(ids)))

        return work


def _ingest(model, tokens: list[int], state):
    ingest = getattr(model, "ingest", None)
    if ingest is not None:
        return ingest(tokens, state)
    return model.eval_sequence(tokens, state)[1]


# ---- responses -----------------------------------------------------------------------------------


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _envelope(kind: str, reply_id: str, created: int, model: str, choices: list, usage=None) -> dict:
    """The fields every completion response and stream chunk share (``kind`` is its "object")."""
    out = {"id": reply_id, "object": kind, "created": created, "model": model, "system_fingerprint": None,
           "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def _usage(prompt_tokens: int, completion_tokens: int, cached: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _failure(error: BaseException) -> OpenAIError:
    if isinstance(error, OpenAIError):
        return error
    if isinstance(error, ValueError):
        return OpenAIError(400, str(error))
    return OpenAIError(500, f"generation failed: {type(error).__name__}: {error}", type="server_error")


async def _drain(job, request: Request, handle) -> None:
    """Hands each result of a non-streaming job to ``handle``; any error (the job's or the
    handler's) becomes an OpenAI error, and the job always ends."""
    try:
        async for item in job.items(request):
            handle(item)
    except Exception as e:
        raise _failure(e) from None
    finally:
        job.cancel()


def _client_gone() -> JSONResponse:
    return JSONResponse(OpenAIError(499, "client closed the request").body(), status_code=499)


# ---- the app -------------------------------------------------------------------------------------


class _Guard:
    """ASGI middleware in front of everything: the API key (for /v1/*) and the body size."""

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
        if self._key is not None and scope["path"].startswith("/v1"):
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
                message = ("Incorrect API key provided" if auth else
                           "Missing API key: send it as the header 'Authorization: Bearer <key>'")
                return await _send(send, *_error_json(401, message, "invalid_request_error", "invalid_api_key",
                                                      [("www-authenticate", "Bearer")]))
        limit = self.config.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await _send(send, *_error_json(400, "invalid Content-Length header", "invalid_request_error"))
            if declared > limit:
                return await _send(send, *_too_large(limit))
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large_message(limit))
            return message

        await self.app(scope, limited_receive, send)


def _too_large_message(limit: int) -> str:
    return f"the request body is larger than this server's limit of {limit} bytes"


def _too_large(limit: int) -> tuple:
    return _error_json(413, _too_large_message(limit), "invalid_request_error", "request_too_large")


async def _send(send, status: int, headers: list, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(model, config: Optional[ServerConfig] = None) -> FastAPI:
    """A FastAPI app serving ``model`` (a :class:`rwkvcpp.Model`) under ``config``.

    ``app.state.server`` is the :class:`ServerState` (counters, cache, scheduler, generator).
    """
    config = config if config is not None else ServerConfig()
    srv = ServerState(model, config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        srv.scheduler.shutdown()

    app = FastAPI(
        lifespan=lifespan,
        title="rwkvcpp",
        description="An OpenAI-compatible API over an RWKV model (rwkv.cpp .bin file). "
                    "RWKV's extra sampling fields: top_k, min_p, penalty_decay, global_penalty.",
        version=_version(),
        redoc_url=None,
    )
    app.state.server = srv
    app.add_middleware(_Guard, config=config)

    # -- errors ------------------------------------------------------------------------------

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        code = "invalid_json" if "not valid JSON" in message else "invalid_value"
        return OpenAIError(400, message, param=param, code=code).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        messages = {404: f"no such endpoint: {request.method} {request.url.path}",
                    405: f"method {request.method} is not allowed on {request.url.path}"}
        message = messages.get(exc.status_code, str(exc.detail))
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = {413: "request_too_large", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return OpenAIError(exc.status_code, message, type=kind, code=code, headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        return OpenAIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").response()

    # -- pages and metadata ------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(WEB_PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})

    @app.get("/health", tags=["server"])
    async def health():
        """Liveness, the model, and how busy the server is."""
        return {"status": "ok", "model": srv.model_id, **srv.stats()}

    def model_card() -> dict:
        return {"id": srv.model_id, "object": "model", "created": srv.created, "owned_by": "rwkvcpp",
                "arch": getattr(model, "arch", None), "n_vocab": model.n_vocab,
                "n_embed": getattr(model, "n_embed", None), "n_layer": getattr(model, "n_layer", None)}

    @app.get("/v1/models", tags=["OpenAI"])
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id}", tags=["OpenAI"])
    async def get_model(model_id: str):
        if model_id != srv.model_id:
            raise OpenAIError(404, f"the model {model_id!r} does not exist; this server has {srv.model_id!r}",
                              param="model", code="model_not_found")
        return model_card()

    # -- chat --------------------------------------------------------------------------------

    @app.post("/v1/chat/completions", tags=["OpenAI"])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        """Chat (OpenAI's chat completions), with tool calls and streaming."""
        if body.logprobs:
            raise _bad("logprobs are not supported by this server", "logprobs")
        try:
            prompt = render_chat(body.messages, body.tools, body.tool_choice)
        except ValueError as e:
            param = "tool_choice" if "tool_choice" in str(e) else "messages"
            raise _bad(str(e), param) from None
        params = srv.sampling(body, prompt.stop)
        ids = await run_in_threadpool(srv.encode, prompt.text, "messages")
        job = srv.scheduler.submit(srv.generate_work([ids], params))
        srv.count(requests=1)
        reply_id, created, n = "chatcmpl-" + secrets.token_hex(12), int(time.time()), len(params)
        replies = [ReplyStream(prompt.tools, prompt.prefill) for _ in range(n)]
        single_call = body.parallel_tool_calls is False

        def finish(i: int) -> tuple[str, Optional[list]]:
            tail, calls = replies[i].finish()
            if calls and single_call:
                calls = calls[:1]
            return tail, calls

        def chunk(choices: list, usage=None) -> dict:
            return _envelope("chat.completion.chunk", reply_id, created, srv.model_id, choices, usage)

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            async def events():
                cached = completion = 0
                try:
                    for i in range(n):
                        yield _sse(chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                                           "logprobs": None, "finish_reason": None}]))
                    async for item in job.items():
                        if item[0] == "prompt":
                            cached = item[2]
                            continue
                        _, i, text, reason, tokens = item
                        out = replies[i].feed(text)
                        if out:
                            yield _sse(chunk([{"index": i, "delta": {"content": out}, "logprobs": None,
                                               "finish_reason": None}]))
                        if reason is not None:
                            completion += tokens
                            tail, calls = finish(i)
                            if tail:
                                yield _sse(chunk([{"index": i, "delta": {"content": tail}, "logprobs": None,
                                                   "finish_reason": None}]))
                            if calls:
                                reason = "tool_calls"
                                deltas = [{"index": k, **call} for k, call in enumerate(calls)]
                                yield _sse(chunk([{"index": i, "delta": {"tool_calls": deltas}, "logprobs": None,
                                                   "finish_reason": None}]))
                            yield _sse(chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason}]))
                    if include_usage:
                        yield _sse(chunk([], _usage(len(ids), completion, cached)))
                except Exception as e:  # after the headers: the error goes in the stream
                    yield _sse(_failure(e).body())
                finally:
                    job.cancel()  # a no-op when finished; frees the slot when the client went away
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

        choices: list[Optional[dict]] = [None] * n
        cached = completion = 0

        def handle(item) -> None:
            nonlocal cached, completion
            if item[0] == "prompt":
                cached = item[2]
                return
            _, i, text, reason, tokens = item
            replies[i].feed(text)
            if reason is not None:
                completion += tokens
                tail, calls = finish(i)
                content = replies[i].content
                message: dict[str, Any] = {"role": "assistant", "content": content}
                if calls:
                    message["content"] = content.strip() or None
                    message["tool_calls"] = calls
                    reason = "tool_calls"
                choices[i] = {"index": i, "message": message, "logprobs": None, "finish_reason": reason}

        await _drain(job, request, handle)
        if any(c is None for c in choices):  # the client went away
            return _client_gone()
        return _envelope("chat.completion", reply_id, created, srv.model_id, choices,
                         _usage(len(ids), completion, cached))

    # -- text completions ---------------------------------------------------------------------

    @app.post("/v1/completions", tags=["OpenAI"])
    async def completions(body: CompletionRequest, request: Request):
        """Continue a prompt (OpenAI's legacy completions), with streaming."""
        if body.logprobs is not None:
            raise _bad("logprobs are not supported by this server", "logprobs")
        if body.suffix:
            raise _bad("suffix (insertion) is not supported by this server", "suffix")
        if body.best_of is not None and body.best_of != body.n:
            raise _bad("best_of is not supported by this server (leave it out, or equal to n)", "best_of")
        raw = body.prompt
        if isinstance(raw, str):
            raw = [raw]
        elif raw and isinstance(raw[0], int):
            raw = [raw]
        if not raw:
            raise _bad("prompt is empty", "prompt")
        if len(raw) > srv.config.max_batch:
            raise _bad(f"prompt has {len(raw)} prompts; at most {srv.config.max_batch} are allowed", "prompt")
        params = srv.sampling(body)
        n = len(params)
        if len(raw) * n > srv.config.max_batch:
            raise _bad(f"{len(raw)} prompts x n={n} is more than this server's {srv.config.max_batch} choices "
                       "per request", "n")

        def tokenize() -> tuple[list[list[int]], list[str]]:
            prompts, texts = [], []
            for k, item in enumerate(raw):
                param = "prompt" if len(raw) == 1 else f"prompt[{k}]"
                if isinstance(item, str):
                    ids = srv.encode(item, param)
                    texts.append(item)
                else:
                    ids = list(item)
                    srv.check_tokens(ids, param)
                    texts.append(srv.tokenizer.decode(ids) if body.echo else "")
                prompts.append(ids)
            return prompts, texts

        prompts, texts = await run_in_threadpool(tokenize)
        job = srv.scheduler.submit(srv.generate_work(prompts, params))
        srv.count(requests=1)
        reply_id, created = "cmpl-" + secrets.token_hex(12), int(time.time())
        n_prompt_tokens = sum(len(p) for p in prompts)

        def chunk(choices: list, usage=None) -> dict:
            return _envelope("text_completion", reply_id, created, srv.model_id, choices, usage)

        def prefix(i: int) -> str:
            return texts[i // n] if body.echo else ""

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            async def events():
                cached = completion = 0
                try:
                    if body.echo:
                        for i in range(len(prompts) * n):
                            yield _sse(chunk([{"index": i, "text": prefix(i), "logprobs": None,
                                               "finish_reason": None}]))
                    async for item in job.items():
                        if item[0] == "prompt":
                            cached += item[2]
                            continue
                        _, i, text, reason, tokens = item
                        if reason is not None:
                            completion += tokens
                        if text or reason is not None:
                            yield _sse(chunk([{"index": i, "text": text, "logprobs": None,
                                               "finish_reason": reason}]))
                    if include_usage:
                        yield _sse(chunk([], _usage(n_prompt_tokens, completion, cached)))
                except Exception as e:
                    yield _sse(_failure(e).body())
                finally:
                    job.cancel()
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

        total = len(prompts) * n
        pieces: list[list[str]] = [[prefix(i)] for i in range(total)]
        reasons: list[Optional[str]] = [None] * total
        cached = completion = 0

        def handle(item) -> None:
            nonlocal cached, completion
            if item[0] == "prompt":
                cached += item[2]
                return
            _, i, text, reason, tokens = item
            pieces[i].append(text)
            if reason is not None:
                reasons[i] = reason
                completion += tokens

        await _drain(job, request, handle)
        if any(r is None for r in reasons):
            return _client_gone()
        choices = [{"index": i, "text": "".join(pieces[i]), "logprobs": None, "finish_reason": reasons[i]}
                   for i in range(total)]
        return _envelope("text_completion", reply_id, created, srv.model_id, choices,
                         _usage(n_prompt_tokens, completion, cached))

    # -- embeddings ---------------------------------------------------------------------------

    @app.post("/v1/embeddings", tags=["OpenAI"])
    async def embeddings(body: EmbeddingRequest, request: Request):
        """RWKV's sentence embedding: the normalised final hidden state after the input."""
        n_embed = getattr(model, "n_embed", None)
        if body.dimensions is not None and body.dimensions != n_embed:
            raise _bad(f"dimensions must be left out or be {n_embed}, the size of this model's embeddings",
                       "dimensions")
        raw = body.input
        if isinstance(raw, str) or (raw and isinstance(raw[0], int)):
            raw = [raw]
        if not raw:
            raise _bad("input is empty", "input")
        if len(raw) > srv.config.max_batch:
            raise _bad(f"input has {len(raw)} items; at most {srv.config.max_batch} are allowed", "input")

        def tokenize() -> list[list[int]]:
            inputs = []
            for k, item in enumerate(raw):
                param = "input" if len(raw) == 1 else f"input[{k}]"
                if isinstance(item, str):
                    inputs.append(srv.encode(item, param))
                else:
                    srv.check_tokens(list(item), param)
                    inputs.append(list(item))
            return inputs

        inputs = await run_in_threadpool(tokenize)
        job = srv.scheduler.submit(srv.embed_work(inputs))
        srv.count(requests=1)
        data: list[Optional[dict]] = [None] * len(inputs)

        def handle(item) -> None:
            i, vector, _ = item
            if body.encoding_format == "base64":
                value: Any = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
            else:
                value = [float(x) for x in vector]
            data[i] = {"object": "embedding", "index": i, "embedding": value}

        await _drain(job, request, handle)
        if any(d is None for d in data):
            return _client_gone()
        tokens = sum(len(x) for x in inputs)
        return {"object": "list", "data": data, "model": srv.model_id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return app


def _version() -> str:
    try:
        from .. import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "0"
