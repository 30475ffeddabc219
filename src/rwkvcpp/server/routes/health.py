"""``GET /health``: liveness, the model, and how busy the server is."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter(tags=["server"])


@router.get("/health")
async def health(request: Request):
    """Liveness, the model, and how busy the server is."""
    engine = request.app.state.engine
    return {"status": "ok", "model": engine.model_id, **engine.stats(),
            "scheduler": request.app.state.scheduler.stats()}
