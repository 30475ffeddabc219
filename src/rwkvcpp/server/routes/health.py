"""``GET /health``: liveness, the model, and how busy the server is."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["server"])


@router.get("/health")
async def health(request: Request):
    """200 with the model and how busy the server is once it is ready; 503 with ``status``
    "loading" while the model loads, "error" (and the message) if that failed."""
    state = request.app.state
    engine = state.engine
    if engine is None:
        failed = state.load_error is not None
        return JSONResponse({"status": "error", "error": str(state.load_error)} if failed else {"status": "loading"},
                            status_code=503, headers={"Retry-After": "5"})
    return {"status": "ok", "model": engine.model_id, **engine.stats(),
            "scheduler": request.app.state.scheduler.stats()}
