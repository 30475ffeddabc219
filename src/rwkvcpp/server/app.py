"""The OpenAI-compatible HTTP API over one model: ``create_app(model, config)`` -> FastAPI app.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both with ``stream``: server
sent events ``data: {...}`` ending with ``data: [DONE]``), ``POST /v1/embeddings``,
``GET /v1/models``, ``GET /health``, ``POST /tokenize`` and ``/detokenize`` (and llama-cpp-python's
``/extras/*`` names), ``GET /`` (a chat page) and the OpenAPI docs at ``/docs`` and ``/redoc``
(served without internet), ``GET /metrics`` (Prometheus).

How a request runs:

* :mod:`.middleware` checks the API key and the body size; a bad request is answered in
  OpenAI's error shape (:mod:`.errors`);
* its route (:mod:`.routes`) checks the fields, renders and tokenizes the prompt (in a thread)
  and submits the work to the scheduler (:mod:`.jobs` is the contract, :mod:`.scheduler` today's
  implementation), which answers 503 when full;
* the route reads the job's items and folds them into OpenAI choices (:mod:`.routes.choices`),
  streamed or whole; a client that goes away cancels its job.

The model, its tokenizer, the state cache and the counters live in :mod:`.engine`.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Optional

from fastapi import FastAPI

from .access_log import AccessLog
from .config import ServerConfig
from .engine import Engine
from .errors import install_error_handlers
from .metrics import Metrics, MetricsMiddleware
from .middleware import Guard, LoadingGate
from .sessions import SessionStore
from .routes import ROUTERS
from .scheduler import BatchScheduler, fit_in_memory

__all__ = ["create_app"]


def create_app(model=None, config: Optional[ServerConfig] = None, *, load: Optional[Callable[[], Any]] = None,
               initial_state: Any = None,
               on_load_error: Optional[Callable[[BaseException], None]] = None) -> FastAPI:
    """A FastAPI app serving ``model`` (a :class:`rwkvcpp.Model`) under ``config``.

    Or, with ``load`` (a function returning the Model) instead of ``model``, an app that starts
    at once and loads the model in a thread: until it is loaded ``GET /health`` answers 503
    ``{"status": "loading"}`` (``"error"`` with the message if the load failed) and the model's
    endpoints 503. ``initial_state``: where every prompt starts (None: a fresh state), an array
    or a function of the loaded model giving one. ``on_load_error(error)`` is called (in the
    loading thread) when ``load`` fails, e.g. to stop the server.

    ``app.state.engine`` is the :class:`~.engine.Engine` (model, generator, cache, counters) and
    ``app.state.scheduler`` the scheduler running the jobs (both None while loading);
    ``app.state.load_error`` the exception a failed ``load`` raised.
    """
    if (model is None) == (load is None):
        raise TypeError("create_app takes a model or a load function, one of the two")
    config = config if config is not None else ServerConfig()

    def start(loaded) -> None:
        engine = Engine(loaded, config)
        engine.initial_state = initial_state(loaded) if callable(initial_state) else initial_state
        app.state.scheduler = BatchScheduler(engine, config.max_concurrent, config.max_queue,
                                             fit_in_memory(loaded, config.parallel), config.prompt_chunk)
        app.state.engine = engine  # the last step: the gate opens once the engine is set

    def load_in_background() -> None:
        try:
            start(load())
        except BaseException as error:  # reported by /health and the gate; the app lives on
            app.state.load_error = error
            if on_load_error is not None:
                on_load_error(error)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if load is not None:
            threading.Thread(target=load_in_background, name="rwkvcpp-load", daemon=True).start()
        yield
        if app.state.scheduler is not None:
            app.state.scheduler.shutdown()

    app = _fastapi(
        lifespan=lifespan,
        title="rwkvcpp",
        description="An OpenAI-compatible API over an RWKV model (rwkv.cpp .bin file). "
                    "RWKV's extra sampling fields: top_k, min_p, penalty_decay, global_penalty.",
        version=_version(),
    )
    app.state.engine = app.state.scheduler = app.state.load_error = None
    if model is not None:
        start(model)
    app.state.metrics = Metrics(app.state)
    app.state.sessions = SessionStore(config.states_dir, config.max_states) if config.states_dir else None
    app.add_middleware(LoadingGate, app_state=app.state)
    app.add_middleware(Guard, config=config)
    if config.cors_origins:  # outside the guard: a browser's preflight carries no API key
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    app.add_middleware(MetricsMiddleware, app_state=app.state)  # it times everything
    if config.access_log == "json":
        app.add_middleware(AccessLog)  # outermost: every answer is logged, refusals included
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


def _fastapi(**settings) -> FastAPI:
    """The app, with /docs and /redoc served from fastapi-offline's copies of Swagger UI and
    ReDoc: a server on a machine without internet has working docs. Without that package,
    FastAPI's own /docs (which loads Swagger UI from a CDN) and no /redoc."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        return FastAPI(redoc_url=None, **settings)
    return FastAPIOffline(**settings)


def _version() -> str:
    try:
        from .. import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "0"
