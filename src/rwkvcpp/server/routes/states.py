"""Saved sessions (:mod:`..sessions`): ``POST /v1/states`` reads a prompt or a conversation and
saves the state after it under a new id; ``GET`` / ``DELETE /v1/states/{id}``. A chat or text
completion with ``rwkv_state: id`` then continues from it (its messages are the turns that come
next; a text prompt is the text that comes next)."""

from __future__ import annotations

from typing import Optional, Union

from fastapi import APIRouter, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from ...chat_format import CONTINUATION, conversation_text
from ..errors import OpenAIError, bad_request
from ..schemas import ChatMessage, _Strict
from .params import check_tokens, encode

router = APIRouter(tags=["sessions"])


class SaveStateRequest(_Strict):
    prompt: Union[str, list[int], None] = Field(None, description="text or token ids to read")
    messages: Optional[list[ChatMessage]] = Field(None, description="a conversation to read (without the "
                                                                    "assistant's cue: a next turn follows)")
    rwkv_state: Optional[str] = Field(None, description="a saved state to continue from")
    model: Optional[str] = None


def sessions(request: Request):
    store = request.app.state.sessions
    if store is None:
        raise OpenAIError(404, "saved sessions are off on this server (rwkvcpp serve --states-dir DIR turns "
                               "them on)", code="sessions_off")
    return store


def start_state(request: Request, state_id: Optional[str]):
    """The saved state a request continues (None: none asked for). Run it in a thread."""
    if state_id is None:
        return None
    return sessions(request).load(request.app.state.engine.model, state_id)


def continuation(text: str, start) -> str:
    """A conversation's text as it follows a saved state (a new turn after the saved ones)."""
    return CONTINUATION + text if start is not None else text


@router.post("/v1/states")
async def save_state(body: SaveStateRequest, request: Request):
    """Reads a prompt or a conversation (after ``rwkv_state`` if given) and saves the state."""
    engine = request.app.state.engine
    store = sessions(request)
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("give either prompt or messages", "prompt")

    def read() -> dict:
        start = start_state(request, body.rwkv_state)
        if body.messages is not None:
            try:
                text = conversation_text(body.messages)
            except ValueError as e:
                raise bad_request(str(e), "messages") from None
            ids = encode(engine, continuation(text, start), "messages")
        elif isinstance(body.prompt, str):
            ids = encode(engine, body.prompt, "prompt")
        else:
            ids = list(body.prompt)
            check_tokens(engine, ids, "prompt")
        state = engine.read_whole(ids, start)
        return store.save(engine.model, state, len(ids))

    return await run_in_threadpool(read)


@router.get("/v1/states/{state_id}")
async def get_state(state_id: str, request: Request):
    return sessions(request).describe(state_id)


@router.delete("/v1/states/{state_id}")
async def delete_state(state_id: str, request: Request):
    return sessions(request).delete(state_id)
