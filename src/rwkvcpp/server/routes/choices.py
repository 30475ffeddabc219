"""Sending OpenAI choices over HTTP: a server-sent event stream, or one JSON body.

The fold from a job's items to choices and their envelope is :mod:`rwkvcpp.completion`, the
same code ``Model.create_completion`` and ``Model.create_chat_completion`` run; this module only
drives it from the scheduler's items, on the event loop.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Optional

from fastapi import Request
from fastapi.responses import StreamingResponse

from ...completion import Choices, Piece, Reply
from ..errors import as_openai_error, client_gone
from ..jobs import Job
from ..metrics import START_KEY

__all__ = ["respond", "drain"]

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def respond(request: Request, job: Job, choices: Choices, *, model_id: str, prompt_tokens: int,
                  stream: bool, include_usage: bool):
    """The response to a completion request whose ``job`` is running: a server-sent event
    stream (``data: {...}`` chunks, ending with ``data: [DONE]``) or one JSON body."""
    reply = Reply(choices, model_id, prompt_tokens)
    timing = _Timing(request)

    if stream:
        async def events():
            try:
                for chunk in choices.opening():
                    yield _sse(reply.chunk(chunk))
                async for item in job.items():
                    timing.saw(item)
                    for chunk in choices.feed(item):
                        yield _sse(reply.chunk(chunk))
                if include_usage:
                    yield _sse(reply.usage_chunk())
            except Exception as e:  # after the headers: the error goes in the stream
                yield _sse(as_openai_error(e).body())
            finally:
                job.cancel()  # a no-op when finished; frees the slot when the client went away
                timing.done()
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    sent = choices.opening()

    def handle(item) -> None:
        timing.saw(item)
        sent.extend(choices.feed(item))

    try:
        await drain(job, request, handle)
    finally:
        timing.done()
    if not choices.complete:
        return client_gone()
    return reply.whole(sent)


class _Timing:
    """When a generation's pieces came, for the metrics' time to first token and per token."""

    def __init__(self, request: Request):
        self.metrics = getattr(request.app.state, "metrics", None)
        self.started = request.scope.get(START_KEY)
        self.first: Optional[float] = None
        self.last: Optional[float] = None
        self.pieces = 0

    def saw(self, item) -> None:
        if isinstance(item, Piece):
            self.last = time.perf_counter()
            if self.first is None:
                self.first = self.last
            self.pieces += 1

    def done(self) -> None:
        if self.metrics is not None:
            self.metrics.observe_generation(self.started, self.first, self.last, self.pieces)


async def drain(job: Job, request: Request, handle: Callable[[Any], Any]) -> None:
    """Hands each item of a non-streaming job to ``handle``; any error (the job's or the
    handler's) becomes an OpenAI error, and the job always ends."""
    try:
        async for item in job.items(request):
            handle(item)
    except Exception as e:
        raise as_openai_error(e) from None
    finally:
        job.cancel()


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
