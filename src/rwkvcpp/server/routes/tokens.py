"""Tokens for clients that budget their context: llama.cpp's server shapes (``POST /tokenize``,
``POST /detokenize``) and llama-cpp-python's (``POST /extras/tokenize``, ``/extras/tokenize/count``,
``/extras/detokenize``). RWKV has no special tokens, so ``add_special`` changes nothing."""

from __future__ import annotations

from typing import Optional, Union

from fastapi import APIRouter, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from ..errors import bad_request
from ..schemas import _Strict

router = APIRouter(tags=["tokens"])


class TokenizeRequest(_Strict):
    content: str = Field(description="the text to tokenize")
    add_special: bool = False
    with_pieces: bool = Field(False, description="each token with its text: [{id, piece}]")


class DetokenizeRequest(_Strict):
    tokens: list[int]


class ExtrasTokenizeRequest(_Strict):
    input: str = Field(description="the text to tokenize")
    model: Optional[str] = None


def _encode(request: Request, text: str, param: str) -> list[int]:
    engine = request.app.state.engine
    if len(text) > 64 * engine.config.max_prompt_tokens:  # cheap bound before tokenizing
        raise bad_request(f"{param} is longer than this server tokenizes ({64 * engine.config.max_prompt_tokens} "
                          "characters)", param)
    return engine.tokenizer.encode(text)


def _decode(request: Request, tokens: list[int]) -> str:
    engine = request.app.state.engine
    n_vocab = engine.model.n_vocab
    bad = [t for t in tokens if not 0 <= t < n_vocab]
    if bad:
        raise bad_request(f"tokens has the id {bad[0]}, outside this model's vocabulary 0..{n_vocab - 1}", "tokens")
    return engine.tokenizer.decode(tokens)


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict:
    """Text -> token ids (llama.cpp's server shape)."""
    ids = await run_in_threadpool(_encode, request, body.content, "content")
    tokens: list[Union[int, dict]] = list(ids)
    if body.with_pieces:
        decode = request.app.state.engine.tokenizer.decode_bytes
        tokens = [{"id": t, "piece": _piece(decode([t]))} for t in ids]
    return {"tokens": tokens}


def _piece(raw: bytes) -> Union[str, list[int]]:
    """A token's text, or its bytes where they are not whole UTF-8 characters (as llama.cpp)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict:
    """Token ids -> text (llama.cpp's server shape)."""
    return {"content": await run_in_threadpool(_decode, request, body.tokens)}


@router.post("/extras/tokenize")
async def extras_tokenize(body: ExtrasTokenizeRequest, request: Request) -> dict:
    """Text -> token ids (llama-cpp-python's server shape)."""
    return {"tokens": await run_in_threadpool(_encode, request, body.input, "input")}


@router.post("/extras/tokenize/count")
async def extras_tokenize_count(body: ExtrasTokenizeRequest, request: Request) -> dict:
    """How many tokens a text is (llama-cpp-python's server shape)."""
    return {"count": len(await run_in_threadpool(_encode, request, body.input, "input"))}


@router.post("/extras/detokenize")
async def extras_detokenize(body: DetokenizeRequest, request: Request) -> dict:
    """Token ids -> text (llama-cpp-python's server shape)."""
    return {"text": await run_in_threadpool(_decode, request, body.tokens)}
