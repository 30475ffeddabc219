"""``GET /v1/models`` and ``GET /v1/models/{id}``: the one model this server has."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..engine import Engine
from ..errors import OpenAIError

router = APIRouter(tags=["OpenAI"])


def model_card(engine: Engine) -> dict:
    model = engine.model
    return {"id": engine.model_id, "object": "model", "created": engine.created, "owned_by": "rwkvcpp",
            "arch": getattr(model, "arch", None), "n_vocab": model.n_vocab,
            "n_embed": getattr(model, "n_embed", None), "n_layer": getattr(model, "n_layer", None)}


@router.get("/v1/models")
async def list_models(request: Request):
    return {"object": "list", "data": [model_card(request.app.state.engine)]}


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, request: Request):
    engine = request.app.state.engine
    if model_id != engine.model_id:
        raise OpenAIError(404, f"the model {model_id!r} does not exist; this server has {engine.model_id!r}",
                          param="model", code="model_not_found")
    return model_card(engine)
