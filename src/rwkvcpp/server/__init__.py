"""An OpenAI-compatible HTTP server for rwkvcpp models.

    >>> from rwkvcpp import Model
    >>> from rwkvcpp.server import ServerConfig, create_app, serve
    >>> serve(Model("model.bin"), ServerConfig(port=8000))      # or: rwkvcpp serve model.bin

Needs the optional dependencies FastAPI and uvicorn: ``pip install fastapi uvicorn``. They
are imported only when an app is created, so ``ServerConfig`` works without them.
"""

from __future__ import annotations

from .config import DEFAULT_SAMPLING, ServerConfig

__all__ = ["ServerConfig", "DEFAULT_SAMPLING", "create_app", "serve", "require_server_dependencies"]

INSTALL_HINT = 'pip install "/path/to/rwkvcpp[server]" (the source checkout or wheel), or: pip install fastapi uvicorn'


def require_server_dependencies(uvicorn: bool = False) -> None:
    """Raises ImportError with the install command when FastAPI (or uvicorn) is missing."""
    needed = ["fastapi", "pydantic"] + (["uvicorn"] if uvicorn else [])
    missing = []
    for name in needed:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f"the rwkvcpp server needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed; install the server extra with: {INSTALL_HINT}"
        )


def create_app(model=None, config: ServerConfig | None = None, **settings):
    """The FastAPI app serving ``model``, or the model a ``load`` function returns, loaded in the
    background (see :func:`rwkvcpp.server.app.create_app`)."""
    require_server_dependencies()
    from .app import create_app as _create_app

    return _create_app(model, config, **settings)


def serve(model, config: ServerConfig | None = None, log_level: str = "info") -> None:
    """Runs the server with uvicorn until SIGINT or SIGTERM (running requests are stopped cleanly)."""
    require_server_dependencies(uvicorn=True)
    from .connections import run_server

    config = config if config is not None else ServerConfig()
    if not run_server(create_app(model, config), config, log_level):
        raise OSError(f"could not serve on {config.host}:{config.port} (see uvicorn's message)")
