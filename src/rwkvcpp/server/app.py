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
from typing import Optional

from fastapi import FastAPI

from .config import ServerConfig
from .engine import Engine
from .errors import install_error_handlers
from .metrics import Metrics, MetricsMiddleware
from .middleware import Guard
from .sessions import SessionStore
from .routes import ROUTERS
from .scheduler import ThreadScheduler

__all__ = ["create_app"]


def create_app(model, config: Optional[ServerConfig] = None) -> FastAPI:
    """A FastAPI app serving ``model`` (a :class:`rwkvcpp.Model`) under ``config``.

    ``app.state.engine`` is the :class:`~.engine.Engine` (model, generator, cache, counters) and
    ``app.state.scheduler`` the scheduler running the jobs.
    """
    config = config if config is not None else ServerConfig()
    engine = Engine(model, config)
    scheduler = ThreadScheduler(engine, config.max_concurrent, config.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        scheduler.shutdown()

    app = _fastapi(
        lifespan=lifespan,
        title="rwkvcpp",
        description="An OpenAI-compatible API over an RWKV model (rwkv.cpp .bin file). "
                    "RWKV's extra sampling fields: top_k, min_p, penalty_decay, global_penalty.",
        version=_version(),
    )
    app.state.engine = engine
    app.state.scheduler = scheduler
    app.state.metrics = Metrics(app.state)
    app.state.sessions = SessionStore(config.states_dir, config.max_states) if config.states_dir else None
    app.add_middleware(Guard, config=config)
    if config.cors_origins:  # outside the guard: a browser's preflight carries no API key
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    app.add_middleware(MetricsMiddleware, app_state=app.state)  # outermost: it times everything
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
