"""The endpoints, one APIRouter per family. Each reads ``request.app.state.engine`` (the model,
tokenizer, state cache, settings) and ``request.app.state.scheduler`` (which runs the jobs)."""

from __future__ import annotations

from .. import metrics
from . import chat, completions, embeddings, health, models, states, tokens, web

ROUTERS = [web.router, health.router, models.router, chat.router, completions.router, embeddings.router,
           tokens.router, metrics.router, states.router]

__all__ = ["ROUTERS"]
