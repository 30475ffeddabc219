"""A request's fields -> the engine's arguments: token lists and SamplingParams, each checked
against the model and the server's limits (a 400 naming the field otherwise)."""

from __future__ import annotations

import math
from typing import Optional, Union

from ...completion import choice_params, response_grammar
from ...sampling import SamplingParams
from ..engine import Engine
from ..errors import OpenAIError, bad_request

__all__ = ["encode", "check_tokens", "as_list", "token_lists", "sampling_params"]

TextsOrTokens = Union[str, list[str], list[int], list[list[int]]]


def encode(engine: Engine, text: str, param: str) -> list[int]:
    if len(text) > 64 * engine.config.max_prompt_tokens:  # cheap bound before tokenizing
        _too_long(engine, None, param)
    ids = engine.tokenizer.encode(text)
    check_tokens(engine, ids, param)
    return ids


def check_tokens(engine: Engine, ids: list[int], param: str) -> None:
    if not ids:
        raise bad_request(f"{param} is empty: there is nothing to read", param)
    if len(ids) > engine.config.max_prompt_tokens:
        _too_long(engine, len(ids), param)
    n_vocab = engine.model.n_vocab
    for t in ids:
        if not 0 <= t < n_vocab:
            raise bad_request(f"{param} has the token id {t}, outside this model's vocabulary 0..{n_vocab - 1}",
                              param)


def _too_long(engine: Engine, n: Optional[int], param: str):
    what = f"{n} tokens" if n is not None else "far too long"
    raise OpenAIError(400, f"{param} is {what}; this server reads at most {engine.config.max_prompt_tokens} "
                           "tokens", param=param, code="context_length_exceeded")


def as_list(raw: TextsOrTokens, param: str, what: str, max_batch: int) -> list:
    """A ``prompt`` or ``input`` field as a list of texts or token lists (one for a single text
    or token list); ``what`` names its items in the error beyond ``max_batch``."""
    if isinstance(raw, str) or (raw and isinstance(raw[0], int)):
        raw = [raw]
    if not raw:
        raise bad_request(f"{param} is empty", param)
    if len(raw) > max_batch:
        raise bad_request(f"{param} has {len(raw)} {what}; at most {max_batch} are allowed", param)
    return raw


def token_lists(engine: Engine, items: list, param: str) -> list[list[int]]:
    """The checked token lists of ``as_list``'s items (texts are tokenized). Run it in a thread."""
    out = []
    for k, item in enumerate(items):
        name = param if len(items) == 1 else f"{param}[{k}]"
        if isinstance(item, str):
            out.append(encode(engine, item, name))
        else:
            ids = list(item)
            check_tokens(engine, ids, name)
            out.append(ids)
    return out


def sampling_params(engine: Engine, req, extra_stop: tuple[str, ...] = (),
                    logprobs: Optional[int] = None, call_grammar: Optional[str] = None) -> list[SamplingParams]:
    """One SamplingParams per choice (``n``), from a request's fields and the defaults;
    ``logprobs``: the alternatives each token's logprobs list (None: no logprobs);
    ``call_grammar``: a chat prompt's required tool call."""
    cfg = engine.config
    n_vocab = engine.model.n_vocab
    if req.n > cfg.max_n:
        raise bad_request(f"n is {req.n}; this server gives at most {cfg.max_n} choices per request", "n")
    max_tokens = getattr(req, "max_completion_tokens", None)
    param = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, param = req.max_tokens, "max_tokens"
    if max_tokens is None:
        max_tokens = cfg.default_max_tokens
    if max_tokens > cfg.max_tokens_cap:
        raise bad_request(f"{param} is {max_tokens}; this server generates at most {cfg.max_tokens_cap} tokens "
                          "per request", param)
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > cfg.max_stop:
        raise bad_request(f"stop has {len(stop)} strings; at most {cfg.max_stop} are allowed", "stop")
    if any(not s for s in stop):
        raise bad_request("stop strings must not be empty", "stop")
    bias = {}
    for key, value in (req.logit_bias or {}).items():
        if not key.strip().isdigit() or int(key) >= n_vocab:
            raise bad_request(f"logit_bias has the key {key!r}; keys are token ids 0..{n_vocab - 1}", "logit_bias")
        if not -100 <= value <= 100 or math.isnan(value):
            raise bad_request(f"logit_bias values must be in [-100, 100], got {value} for token {key}",
                              "logit_bias")
        bias[int(key)] = -math.inf if value <= -100 else value  # -100 bans, as OpenAI documents
    defaults = cfg.sampling

    def pick(name):
        value = getattr(req, name)
        return defaults[name] if value is None else value

    seed = req.seed % (1 << 64) if req.seed is not None else None
    grammar = _grammar(req, call_grammar)
    try:
        base = SamplingParams(
            temperature=pick("temperature"), top_p=pick("top_p"), top_k=pick("top_k"), min_p=pick("min_p"),
            presence_penalty=pick("presence_penalty"), frequency_penalty=pick("frequency_penalty"),
            penalty_decay=pick("penalty_decay"), count_prompt=bool(req.global_penalty),
            logit_bias=bias, stop_tokens=engine.end_tokens,
            stop=tuple(dict.fromkeys(tuple(stop) + tuple(extra_stop))), seed=seed, max_tokens=max_tokens,
            logprobs=logprobs, grammar=grammar,
        )
    except ValueError as e:
        raise bad_request(str(e), str(e).split(" ", 1)[0]) from None
    return choice_params(base, req.n)


def _grammar(req, call_grammar: Optional[str]):
    """The request's output constraint (response_format, or llama.cpp's grammar / json_schema)."""
    fields = [name for name in ("response_format", "grammar", "json_schema") if getattr(req, name) is not None]
    if req.response_format is not None and req.response_format.get("type") == "text":
        fields.remove("response_format")
    if len(fields) > 1:
        raise bad_request(f"{' and '.join(fields)}: give one of them, not several", fields[1])
    response_format = req.response_format
    if req.json_schema is not None:
        response_format = {"type": "json_schema", "json_schema": {"schema": req.json_schema}}
    try:
        return response_grammar(response_format, req.grammar, call_grammar)
    except ValueError as e:
        raise bad_request(str(e), fields[0] if fields else "tool_choice") from None

