"""The one fold from a job's items to OpenAI choices, and the two ways of sending it.

A :class:`Choices` turns each item into the choice chunks of a stream (``feed``). A streaming
response sends them as they come; a non-streaming one collects them and ``merge``s them into
whole choices, as a client joining the stream would. So both answers come from the same text.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Callable, Optional, Sequence

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..chat_format import ReplyStream
from ..errors import as_openai_error, client_gone
from ..jobs import Item, Job, Piece, PromptRead

__all__ = ["Choices", "ChatChoices", "TextChoices", "respond", "drain"]

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Choices:
    """Generated items -> choice chunks, for one response; counts the usage on the way."""

    object = ""  # the response's "object"
    chunk_object = ""  # a stream chunk's "object"
    id_prefix = ""

    def __init__(self, n_choices: int):
        self.n_choices = n_choices
        self.cached = 0  # prompt tokens that came from the state cache
        self.completion = 0  # tokens generated
        self.finished = 0  # choices with their finish reason

    @property
    def complete(self) -> bool:
        return self.finished == self.n_choices

    def opening(self) -> list[dict]:
        """Chunks sent before any item."""
        return []

    def feed(self, item: Item) -> list[dict]:
        if isinstance(item, PromptRead):
            self.cached += item.cached_tokens
            return []
        if item.finish_reason is not None:
            self.completion += item.completion_tokens
            self.finished += 1
        return self.piece(item)

    def piece(self, piece: Piece) -> list[dict]:
        raise NotImplementedError

    def merge(self, chunks: Sequence[dict]) -> list[dict]:
        """The whole choices that ``chunks`` (all of a response's, in order) add up to."""
        raise NotImplementedError


class ChatChoices(Choices):
    """Chat: each choice's text goes through a :class:`ReplyStream` (leading space, tool calls)."""

    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def __init__(self, n_choices: int, tools: Sequence[str], prefill: str, single_call: bool):
        super().__init__(n_choices)
        self.replies = [ReplyStream(tools, prefill) for _ in range(n_choices)]
        self.single_call = single_call

    def opening(self) -> list[dict]:
        return [_delta(i, {"role": "assistant", "content": ""}) for i in range(self.n_choices)]

    def piece(self, piece: Piece) -> list[dict]:
        i, reply, reason = piece.choice, self.replies[piece.choice], piece.finish_reason
        out = reply.feed(piece.text)
        chunks = [_delta(i, {"content": out})] if out else []
        if reason is not None:
            tail, calls = reply.finish()
            if calls and self.single_call:
                calls = calls[:1]
            if tail:
                chunks.append(_delta(i, {"content": tail}))
            if calls:
                reason = "tool_calls"
                chunks.append(_delta(i, {"tool_calls": [{"index": k, **call} for k, call in enumerate(calls)]}))
            chunks.append(_delta(i, {}, reason))
        return chunks

    def merge(self, chunks: Sequence[dict]) -> list[dict]:
        choices: list[dict] = [{} for _ in range(self.n_choices)]
        for chunk in chunks:
            choice, delta = choices[chunk["index"]], chunk["delta"]
            message = choice.setdefault("message", {"role": "assistant", "content": ""})
            message["content"] += delta.get("content", "")
            for call in delta.get("tool_calls", ()):
                message.setdefault("tool_calls", []).append({k: v for k, v in call.items() if k != "index"})
            choice["finish_reason"] = chunk["finish_reason"]
        out = []
        for i, choice in enumerate(choices):
            message = choice["message"]
            if message.get("tool_calls"):  # text besides the calls, if any, is content
                message["content"] = message["content"].strip() or None
            out.append({"index": i, "message": message, "logprobs": None, "finish_reason": choice["finish_reason"]})
        return out


class TextChoices(Choices):
    """Text completions: ``n`` choices per prompt, each with the prompt's text first if ``echo``."""

    object = "text_completion"
    chunk_object = "text_completion"
    id_prefix = "cmpl-"

    def __init__(self, n_choices: int, echoed: Optional[Sequence[str]]):
        super().__init__(n_choices)
        self.echoed = echoed  # per choice, or None

    def opening(self) -> list[dict]:
        if self.echoed is None:
            return []
        return [_text(i, text) for i, text in enumerate(self.echoed)]

    def piece(self, piece: Piece) -> list[dict]:
        if piece.text or piece.finish_reason is not None:
            return [_text(piece.choice, piece.text, piece.finish_reason)]
        return []

    def merge(self, chunks: Sequence[dict]) -> list[dict]:
        texts: list[list[str]] = [[] for _ in range(self.n_choices)]
        reasons: list[Optional[str]] = [None] * self.n_choices
        for chunk in chunks:
            texts[chunk["index"]].append(chunk["text"])
            reasons[chunk["index"]] = chunk["finish_reason"] or reasons[chunk["index"]]
        return [_text(i, "".join(texts[i]), reasons[i]) for i in range(self.n_choices)]


def _delta(i: int, delta: dict, finish_reason: Optional[str] = None) -> dict:
    return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _text(i: int, text: str, finish_reason: Optional[str] = None) -> dict:
    return {"index": i, "text": text, "logprobs": None, "finish_reason": finish_reason}


# ---- sending -------------------------------------------------------------------------------------


async def respond(request: Request, job: Job, choices: Choices, *, model_id: str, prompt_tokens: int,
                  stream: bool, include_usage: bool):
    """The response to a completion request whose ``job`` is running: a server-sent event
    stream (``data: {...}`` chunks, ending with ``data: [DONE]``) or one JSON body."""
    reply_id, created = choices.id_prefix + secrets.token_hex(12), int(time.time())

    def envelope(kind: str, body: list, usage: Optional[dict] = None) -> dict:
        out = {"id": reply_id, "object": kind, "created": created, "model": model_id, "system_fingerprint": None,
               "choices": body}
        if usage is not None:
            out["usage"] = usage
        return out

    def usage() -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": choices.completion,
                "total_tokens": prompt_tokens + choices.completion,
                "prompt_tokens_details": {"cached_tokens": choices.cached}}

    if stream:
        async def events():
            try:
                for chunk in choices.opening():
                    yield _sse(envelope(choices.chunk_object, [chunk]))
                async for item in job.items():
                    for chunk in choices.feed(item):
                        yield _sse(envelope(choices.chunk_object, [chunk]))
                if include_usage:
                    yield _sse(envelope(choices.chunk_object, [], usage()))
            except Exception as e:  # after the headers: the error goes in the stream
                yield _sse(as_openai_error(e).body())
            finally:
                job.cancel()  # a no-op when finished; frees the slot when the client went away
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    sent = choices.opening()
    await drain(job, request, lambda item: sent.extend(choices.feed(item)))
    if not choices.complete:
        return client_gone()
    return envelope(choices.object, choices.merge(sent), usage())


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
