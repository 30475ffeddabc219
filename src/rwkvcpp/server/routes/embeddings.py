"""``POST /v1/embeddings``: RWKV's sentence embedding, in OpenAI's embeddings shape."""

from __future__ import annotations

from typing import Optional

import numpy as np
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ...completion import embedding_response
from ..errors import bad_request, client_gone
from ..jobs import Embed, Vector
from ..schemas import EmbeddingRequest
from .choices import drain
from .params import as_list, token_lists

router = APIRouter(tags=["OpenAI"])


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    """RWKV's sentence embedding: the normalised final hidden state after the input."""
    engine, scheduler = request.app.state.engine, request.app.state.scheduler
    n_embed = getattr(engine.model, "n_embed", None)
    if body.dimensions is not None and body.dimensions != n_embed:
        raise bad_request(f"dimensions must be left out or be {n_embed}, the size of this model's embeddings",
                          "dimensions")
    raw = as_list(body.input, "input", "items", engine.config.max_batch)
    inputs = await run_in_threadpool(token_lists, engine, raw, "input")
    job = scheduler.submit(Embed(inputs))
    engine.count(requests=1)
    vectors: list[Optional[np.ndarray]] = [None] * len(inputs)

    def handle(item: Vector) -> None:
        vectors[item.index] = item.vector

    await drain(job, request, handle)
    if any(v is None for v in vectors):
        return client_gone()
    return embedding_response(vectors, engine.model_id, sum(len(x) for x in inputs), body.encoding_format)
