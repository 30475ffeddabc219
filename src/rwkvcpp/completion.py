"""OpenAI-shaped completions: the one implementation behind ``Model.create_completion`` /
``Model.create_chat_completion`` and the HTTP server's ``/v1/completions`` and
``/v1/chat/completions``.

A request runs in three steps, whoever sends the answer:

1. :func:`generate_items` turns prompts and one :class:`SamplingParams` per choice into items:
   a :class:`PromptRead` per prompt, then a :class:`Piece` per sampled token of each choice;
2. a :class:`Choices` (:class:`ChatChoices` or :class:`TextChoices`) turns each item into the
   choice chunks of a stream; whole choices are those chunks merged, as a client joining the
   stream would, so a streamed and a non-streamed answer always have the same text;
3. a :class:`Reply` wraps chunks and choices in OpenAI's envelope (id, object, created, model,
   usage).

:func:`respond` drives the three synchronously (the Python API); the server drives the same
objects from its scheduler's items, over server-sent events or as one JSON body
(``rwkvcpp.server.routes.choices``); its scheduler reads prompts through its state cache.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np

from ._typing import FloatArray, JSONObject
from .chat_format import ReplyStream
from .sampling import SamplingParams, TokenLogprob, log_softmax, token_logprob

if TYPE_CHECKING:
    from .constrain import Grammar
    from .generate import Generator
    from .model import Model
    from .tokenizer import Tokenizer

__all__ = [
    "PromptRead", "Piece", "Item", "generate_items", "end_tokens", "model_id", "choice_params",
    "Choices", "ChatChoices", "TextChoices", "Reply", "respond", "embedding_response", "prompt_logprobs",
    "response_grammar",
]


# ---- items ---------------------------------------------------------------------------------------


class PromptRead(NamedTuple):
    """A prompt was read; ``cached_tokens`` of it came from a state cache."""

    prompt: int
    cached_tokens: int


class Piece(NamedTuple):
    """The next text of one choice, after one sampled token. The last piece of a choice has its
    ``finish_reason`` and how many tokens it generated in all; ``logprob`` is the token's when
    the choice asked for logprobs."""

    choice: int
    text: str
    finish_reason: Optional[str]
    completion_tokens: int
    logprob: Optional[TokenLogprob] = None


Item = Union[PromptRead, Piece]


def generate_items(generator: Generator, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams],
                   start: Optional[FloatArray] = None) -> Iterator[Item]:
    """The items of ``len(params)`` choices for each prompt (checked token lists); choice ``i``
    of prompt ``p`` is number ``p * len(params) + i``; every prompt continues ``start`` (None:
    a fresh state) and is read whole. One choice runs on ``generator`` alone; several run
    together in a :class:`~rwkvcpp.batch.BatchGenerator` (each prompt read once for its
    choices), their pieces interleaved. Closing the iterator early stops the generation. (The
    server runs the same choices in its scheduler's batch, through its state cache.)"""
    n = len(params)
    if len(prompts) * n == 1:
        yield PromptRead(0, 0)
        stream = generator.stream(list(prompts[0]), params[0], start)
        try:
            for chunk in stream:
                tokens = chunk.result.completion_tokens if chunk.result is not None else 0
                yield Piece(0, chunk.text, chunk.finish_reason, tokens, chunk.logprob)
        finally:
            stream.close()
        return
    from .batch import BatchGenerator

    batch = BatchGenerator(generator.model, generator.tokenizer)
    number: dict[int, int] = {}  # choice id -> its number
    for p, ids in enumerate(prompts):
        yield PromptRead(p, 0)
        number.update((c, p * n + i) for i, c in enumerate(batch.add(list(ids), params, start)))
    for event in batch.run():
        chunk = event.chunk
        tokens = chunk.result.completion_tokens if chunk.result is not None else 0
        yield Piece(number[event.choice], chunk.text, chunk.finish_reason, tokens, chunk.logprob)


# Prompt tokens read per call when scoring a prompt: all-token logits are n_vocab floats a token.
_SCORE_CHUNK = 64


def prompt_logprobs(model: Model, ids: Sequence[int], top: int,
                    start: Optional[FloatArray] = None) -> list[Optional[TokenLogprob]]:
    """Each prompt token's log probability given the tokens before it (after ``start``, if
    given; the model's own distribution: no sampling settings apply), with the ``top`` most
    likely tokens; None for the first token, which nothing here predicts. What ``echo`` with
    ``logprobs`` shows."""
    out: list[Optional[TokenLogprob]] = [None]
    state = start
    for at in range(0, len(ids) - 1, _SCORE_CHUNK):
        chunk = list(ids[at:at + _SCORE_CHUNK])
        logits, state = model.eval_sequence(chunk, state, all_logits=True)
        for k, row in enumerate(logits):
            if at + k + 1 < len(ids):
                out.append(token_logprob(log_softmax(row), ids[at + k + 1], top))
    return out


def response_grammar(response_format: Any = None, grammar: Any = None,
                     call_grammar: Optional[str] = None) -> Optional[Grammar]:
    """The :class:`~rwkvcpp.constrain.Grammar` a request asks for, or None: OpenAI's
    ``response_format`` (``{"type": "text" | "json_object" | "json_schema", ...}``; a
    ``json_object`` with a ``schema``, as llama-cpp-python takes it, is that schema), or
    llama.cpp's ``grammar`` (GBNF text, or a Grammar). ``call_grammar`` is a chat prompt's
    (a required tool call), used when the request asks for nothing else. ValueError (a
    GrammarError) for a bad one, naming the field."""
    from .constrain import Grammar

    if response_format is not None and grammar is not None:
        raise ValueError("response_format and grammar: give one of them, not both")
    if grammar is not None:
        return grammar if isinstance(grammar, Grammar) else Grammar.gbnf(grammar)
    if response_format is not None:
        if not isinstance(response_format, dict) or "type" not in response_format:
            raise ValueError("response_format must be an object with a type: text, json_object or json_schema")
        kind = response_format["type"]
        if kind == "json_object":
            schema = response_format.get("schema")
            return Grammar.json_schema(schema) if schema is not None else Grammar.json_object()
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise ValueError('response_format json_schema needs {"json_schema": {"name": ..., "schema": {...}}}')
            return Grammar.json_schema(spec["schema"])
        if kind != "text":
            raise ValueError(f"response_format type must be text, json_object or json_schema, not {kind!r}")
    if call_grammar is not None:
        try:
            return Grammar.lark(call_grammar)
        except ValueError:  # llguidance missing (or the tools' schemas beyond it): the prefill alone
            return None
    return None


def end_tokens(tokenizer: Tokenizer) -> tuple[int, ...]:
    """The token ids that end a document: 0 in the World and 20B vocabularies; none in a byte
    vocabulary, where 0 is a byte."""
    return () if tokenizer.name == "bytes" else (0,)


def model_id(model: object, name: Optional[str] = None) -> str:
    """The model id of responses: ``name``, else the model file's name without ``.bin``."""
    return name or Path(getattr(model, "path", "rwkv")).stem or "rwkv"


def choice_params(base: SamplingParams, n: int) -> list[SamplingParams]:
    """One SamplingParams per choice: with a seed, choice ``i`` draws with ``seed + i``, so the
    choices differ and each is reproducible."""
    if base.seed is None:
        return [base] * n
    return [replace(base, seed=(base.seed + i) % (1 << 64)) for i in range(n)]


# ---- items -> choices ----------------------------------------------------------------------------


class Choices:
    """Generated items -> choice chunks, for one response; counts the usage on the way."""

    object = ""  # the response's "object"
    chunk_object = ""  # a stream chunk's "object"
    id_prefix = ""

    def __init__(self, n_choices: int, tokenizer: Any = None):
        self.n_choices = n_choices
        self.tokenizer = tokenizer  # for the tokens' text in logprobs
        self.cached = 0  # prompt tokens that came from the state cache
        self.completion = 0  # tokens generated
        self.finished = 0  # choices with their finish reason

    def _token(self, token: int) -> tuple[str, list[int]]:
        """A token's text and bytes, as logprobs show them (a token that ends inside a UTF-8
        character has U+FFFD in its text; its bytes are exact)."""
        raw = self.tokenizer.decode_bytes([token])
        return raw.decode("utf-8", errors="replace"), list(raw)

    @property
    def complete(self) -> bool:
        return self.finished == self.n_choices

    def opening(self) -> list[JSONObject]:
        """Chunks sent before any item."""
        return []

    def feed(self, item: Item) -> list[JSONObject]:
        if isinstance(item, PromptRead):
            self.cached += item.cached_tokens
            return []
        if item.finish_reason is not None:
            self.completion += item.completion_tokens
            self.finished += 1
        return self.piece(item)

    def piece(self, piece: Piece) -> list[JSONObject]:
        raise NotImplementedError

    def merge(self, chunks: Sequence[JSONObject]) -> list[JSONObject]:
        """The whole choices that ``chunks`` (all of a response's, in order) add up to."""
        raise NotImplementedError


class ChatChoices(Choices):
    """Chat: each choice's text goes through a :class:`ReplyStream` (leading space, tool calls)."""

    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def __init__(self, n_choices: int, tools: Sequence[str], prefill: str, single_call: bool,
                 tokenizer: Any = None):
        super().__init__(n_choices, tokenizer)
        self.replies = [ReplyStream(tools, prefill) for _ in range(n_choices)]
        self.single_call = single_call

    def opening(self) -> list[JSONObject]:
        return [_delta(i, {"role": "assistant", "content": ""}) for i in range(self.n_choices)]

    def piece(self, piece: Piece) -> list[JSONObject]:
        i, reply, reason = piece.choice, self.replies[piece.choice], piece.finish_reason
        out = reply.feed(piece.text)
        chunks = [_delta(i, {"content": out})] if out else []
        if piece.logprob is not None and self.tokenizer is not None:
            if not chunks:  # the text is held back, the token's logprob goes out now
                chunks.append(_delta(i, {"content": ""}))
            chunks[0]["logprobs"] = {"content": [self._entry(piece.logprob)], "refusal": None}
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

    def _entry(self, scored: TokenLogprob) -> JSONObject:
        def one(token: int, logprob: float) -> JSONObject:
            text, raw = self._token(token)
            return {"token": text, "logprob": logprob, "bytes": raw}

        return {**one(scored.token, scored.logprob), "top_logprobs": [one(t, lp) for t, lp in scored.top]}

    def merge(self, chunks: Sequence[JSONObject]) -> list[JSONObject]:
        choices: list[JSONObject] = [{} for _ in range(self.n_choices)]
        for chunk in chunks:
            choice, delta = choices[chunk["index"]], chunk["delta"]
            message = choice.setdefault("message", {"role": "assistant", "content": ""})
            message["content"] += delta.get("content", "")
            if chunk["logprobs"] is not None:
                choice.setdefault("logprobs", {"content": [], "refusal": None})["content"] += \
                    chunk["logprobs"]["content"]
            for call in delta.get("tool_calls", ()):
                message.setdefault("tool_calls", []).append({k: v for k, v in call.items() if k != "index"})
            choice["finish_reason"] = chunk["finish_reason"]
        out = []
        for i, choice in enumerate(choices):
            message = choice["message"]
            if message.get("tool_calls"):  # text besides the calls, if any, is content
                message["content"] = message["content"].strip() or None
            out.append({"index": i, "message": message, "logprobs": choice.get("logprobs"),
                        "finish_reason": choice["finish_reason"]})
        return out


class TextChoices(Choices):
    """Text completions: ``n`` choices per prompt, each with the prompt's text first if ``echo``."""

    object = "text_completion"
    chunk_object = "text_completion"
    id_prefix = "cmpl-"

    def __init__(self, n_choices: int, echoed: Optional[Sequence[str]], tokenizer: Any = None,
                 echoed_logprobs: Optional[Sequence[tuple[Sequence[int], Sequence[Optional[TokenLogprob]]]]] = None):
        super().__init__(n_choices, tokenizer)
        self.echoed = echoed  # per choice, or None
        self.echoed_logprobs = echoed_logprobs  # per choice: its prompt's ids and prompt_logprobs
        # where each choice's next token starts in its text (logprobs' text_offset)
        self.offsets = [0] * n_choices

    def opening(self) -> list[JSONObject]:
        if self.echoed is None:
            return []
        chunks = [_text(i, text) for i, text in enumerate(self.echoed)]
        for i, chunk in enumerate(chunks):
            if self.echoed_logprobs is not None:
                chunk["logprobs"] = self._logprobs(i, *self.echoed_logprobs[i])
            self.offsets[i] = len(chunk["text"])
        return chunks

    def piece(self, piece: Piece) -> list[JSONObject]:
        scored = piece.logprob if self.tokenizer is not None else None
        if not (piece.text or piece.finish_reason is not None or scored is not None):
            return []
        chunk = _text(piece.choice, piece.text, piece.finish_reason)
        if scored is not None:
            chunk["logprobs"] = self._logprobs(piece.choice, [scored.token], [scored])
        return [chunk]

    def _logprobs(self, i: int, tokens: Sequence[int], entries: Sequence[Optional[TokenLogprob]]) -> JSONObject:
        """Completions' logprobs of ``tokens`` of choice ``i``; an entry is None where nothing
        predicts the token (a prompt's first)."""
        out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for token, entry in zip(tokens, entries):
            text, _ = self._token(token)
            out["tokens"].append(text)
            out["token_logprobs"].append(entry.logprob if entry is not None else None)
            out["top_logprobs"].append({self._token(t)[0]: lp for t, lp in entry.top} if entry is not None else None)
            out["text_offset"].append(self.offsets[i])
            self.offsets[i] += len(text)
        return out

    def merge(self, chunks: Sequence[JSONObject]) -> list[JSONObject]:
        texts: list[list[str]] = [[] for _ in range(self.n_choices)]
        reasons: list[Optional[str]] = [None] * self.n_choices
        logprobs: list[Optional[JSONObject]] = [None] * self.n_choices
        for chunk in chunks:
            i = chunk["index"]
            texts[i].append(chunk["text"])
            reasons[i] = chunk["finish_reason"] or reasons[i]
            if chunk["logprobs"] is not None:
                entry = logprobs[i]
                if entry is None:
                    entry = logprobs[i] = {key: [] for key in chunk["logprobs"]}
                for key, values in chunk["logprobs"].items():
                    entry[key] += values
        out = [_text(i, "".join(texts[i]), reasons[i]) for i in range(self.n_choices)]
        for choice, merged in zip(out, logprobs):
            choice["logprobs"] = merged
        return out


def _delta(i: int, delta: JSONObject, finish_reason: Optional[str] = None) -> JSONObject:
    return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _text(i: int, text: str, finish_reason: Optional[str] = None) -> JSONObject:
    return {"index": i, "text": text, "logprobs": None, "finish_reason": finish_reason}


# ---- choices -> responses ------------------------------------------------------------------------


class Reply:
    """The envelope of one response: the same id and creation time on every chunk."""

    def __init__(self, choices: Choices, model_id: str, prompt_tokens: int):
        self.choices = choices
        self.model_id = model_id
        self.prompt_tokens = prompt_tokens
        self.id = choices.id_prefix + secrets.token_hex(12)
        self.created = int(time.time())

    def _envelope(self, kind: str, body: list[JSONObject], usage: Optional[JSONObject] = None) -> JSONObject:
        out = {"id": self.id, "object": kind, "created": self.created, "model": self.model_id,
               "system_fingerprint": None, "choices": body}
        if usage is not None:
            out["usage"] = usage
        return out

    def chunk(self, chunk: JSONObject) -> JSONObject:
        """A stream chunk holding one choice chunk."""
        return self._envelope(self.choices.chunk_object, [chunk])

    def usage_chunk(self) -> JSONObject:
        """The last chunk of a stream that asked for usage: no choices, the usage."""
        return self._envelope(self.choices.chunk_object, [], self.usage())

    def whole(self, chunks: Sequence[JSONObject]) -> JSONObject:
        """The non-streamed response: every chunk merged into whole choices, with the usage."""
        return self._envelope(self.choices.object, self.choices.merge(chunks), self.usage())

    def usage(self) -> JSONObject:
        completion = self.choices.completion
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion,
                "prompt_tokens_details": {"cached_tokens": self.choices.cached}}


def respond(items: Iterator[Item], choices: Choices, *, model_id: str, prompt_tokens: int, stream: bool,
            include_usage: bool = False) -> Union[JSONObject, Iterator[JSONObject]]:
    """The response to a request whose ``items`` are ready to run: an iterator of stream chunks
    (the generation runs as it is read; closing it stops the generation), or the whole response."""
    reply = Reply(choices, model_id, prompt_tokens)
    if stream:
        return _stream(items, reply, include_usage)
    sent = choices.opening()
    for item in items:
        sent.extend(choices.feed(item))
    return reply.whole(sent)


def _stream(items: Iterator[Item], reply: Reply, include_usage: bool) -> Iterator[JSONObject]:
    try:
        for chunk in reply.choices.opening():
            yield reply.chunk(chunk)
        for item in items:
            for chunk in reply.choices.feed(item):
                yield reply.chunk(chunk)
        if include_usage:
            yield reply.usage_chunk()
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def embedding_response(vectors: Union[Sequence[FloatArray], FloatArray], model_id: str, prompt_tokens: int,
                       encoding_format: str = "float") -> JSONObject:
    """OpenAI's embeddings response: one ``embedding`` per vector, as floats or as base64 of
    little-endian float32 (``encoding_format="base64"``)."""
    data = []
    for index, vector in enumerate(vectors):
        if encoding_format == "base64":
            value: Any = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
        else:
            value = [float(x) for x in vector]
        data.append({"object": "embedding", "index": index, "embedding": value})
    return {"object": "list", "data": data, "model": model_id,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
