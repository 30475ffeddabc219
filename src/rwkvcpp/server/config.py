"""The server's settings: limits, defaults and sampling defaults, in one dataclass.

Nothing here needs FastAPI, so ``ServerConfig`` can be built (and checked) before the optional
server dependencies are imported. It is the one place the settings are checked: its errors name
each setting as ``ServerConfig.<field>``, which ``rwkvcpp serve`` turns into its flags.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Optional, Union

from ..sampling import CHAT_DEFAULTS

__all__ = ["ServerConfig", "DEFAULT_SAMPLING", "LOOPBACK_HOSTS", "default_parallel"]

# Names of this machine that a Host header may carry when the server listens on loopback.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

ACCESS_LOGS = ("text", "json", "off")

# Used for any sampling field a request leaves out: the settings of `rwkvcpp chat`.
DEFAULT_SAMPLING = CHAT_DEFAULTS


@dataclass
class ServerConfig:
    """Settings of one server. Every limit is enforced with a 400 (or 413/503) in OpenAI's
    error shape, never by silently truncating.

    host, port:          where ``rwkvcpp serve`` listens (loopback only by default)
    model_name:          the model id shown by /v1/models and in responses (default: the
                         file name without ``.bin``); requests may name any model
    api_key:             a key, or a list of keys: when set, requests to the API (/v1/*, /tokenize,
                         /detokenize, /extras/*, /metrics; the docs too unless ``public_docs``)
                         need ``Authorization: Bearer <one of them>``; /health and the chat page
                         never do
    public_docs:         /docs, /redoc and /openapi.json without the key
    allowed_hosts:       Host header names accepted besides localhost, 127.0.0.1 and [::1] while
                         bound to a loopback address (a DNS-rebinding guard)
    cors_origins:        origins a browser page may call the API from (CORS); "*" for any;
                         default none
    header_timeout, body_timeout: seconds a client may take to send a request's headers (else
                         the connection is closed) and its body (else 408)
    max_connections:     open connections (and requests in flight) beyond which a request gets 503
    states_dir:          the folder of saved sessions (POST /v1/states; ``rwkv_state`` in a
                         request), shared by replicas that mount it; None turns them off
    max_states:          saved sessions kept; saving one more deletes the least recently used
    max_body_bytes:      largest request body (413 beyond)
    max_prompt_tokens:   longest prompt, or embedding input, in tokens
    max_tokens_cap:      the most ``max_tokens`` a request may ask for
    default_max_tokens:  ``max_tokens`` of a request that gives none
    max_n:               the most choices (``n``) per request
    max_batch:           the most prompts (completions) or inputs (embeddings) per request
    max_stop:            the most stop strings per request
    parallel:            the most sequences (a request's choices, each prompt of a batch of prompts)
                         stepped together: each step evaluates them all in one pass over the
                         weights (continuous batching). Default (None): 4 per core, between 4 and
                         32 (:func:`default_parallel`), fewer if their states would not fit in an
                         eighth of the free memory
    prompt_chunk:        the most prompt tokens read per step, over all prompts being read: a
                         long prompt is read in pieces between the other sequences' tokens
    max_concurrent:      requests running at once (default: ``parallel``); the oldest waiting
                         request joins at the next step once one ends and a sequence is free
    max_queue:           requests waiting beyond those; more get a 503
    cache_entries, cache_bytes: bounds of the state cache (states keyed by token prefix, so a
                         multi-turn chat evaluates only its new turn); 0 entries turns it off
    sampling:            defaults of the sampling fields a request leaves out
    access_log:          "text" (uvicorn's access lines), "json" (one JSON object per request:
                         time, client, method, path, status, duration, bytes; for log shippers)
                         or "off"
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model_name: Optional[str] = None
    api_key: Union[str, Sequence[str], None] = None
    public_docs: bool = False
    allowed_hosts: Sequence[str] = ()
    cors_origins: Sequence[str] = ()
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 256
    states_dir: Optional[str] = None
    max_states: int = 1000
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 16384
    max_tokens_cap: int = 4096
    default_max_tokens: int = 512
    max_n: int = 8
    max_batch: int = 64
    max_stop: int = 16
    parallel: Optional[int] = None
    prompt_chunk: int = 64
    max_concurrent: Optional[int] = None
    max_queue: int = 32
    cache_entries: int = 64
    cache_bytes: int = 512 << 20
    sampling: dict = field(default_factory=lambda: dict(DEFAULT_SAMPLING))
    access_log: str = "text"

    def __post_init__(self):
        if self.parallel is None:
            self.parallel = default_parallel()
        if self.max_concurrent is None:
            self.max_concurrent = self.parallel
        positive = ("max_body_bytes", "max_prompt_tokens", "max_tokens_cap", "max_n", "max_batch", "parallel",
                    "prompt_chunk", "max_concurrent", "max_connections", "max_states")
        non_negative = ("default_max_tokens", "max_stop", "max_queue", "cache_entries", "cache_bytes")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in positive + non_negative or f.name == "port":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"ServerConfig.{f.name} must be an integer, not {value!r}")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"ServerConfig.{name} must be at least 1, not {getattr(self, name)}")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"ServerConfig.{name} must be 0 or more, not {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"ServerConfig.port must be in 0..65535, not {self.port}")
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError(
                f"ServerConfig.default_max_tokens ({self.default_max_tokens}) is above ServerConfig.max_tokens_cap "
                f"({self.max_tokens_cap})"
            )
        keys = (self.api_key,) if isinstance(self.api_key, str) else tuple(self.api_key or ())
        for key in keys:
            if not isinstance(key, str) or not key or key != key.strip() or any(c.isspace() for c in key):
                raise ValueError("ServerConfig.api_key: each key must be a non-empty string without spaces")
        for name in ("allowed_hosts", "cors_origins"):
            values = getattr(self, name)
            values = (values,) if isinstance(values, str) else tuple(values)
            if not all(isinstance(v, str) and v for v in values):
                raise ValueError(f"ServerConfig.{name} must be a list of non-empty strings")
            setattr(self, name, values)
        for name in ("header_timeout", "body_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
                raise ValueError(f"ServerConfig.{name} must be a positive number of seconds, not {value!r}")
        if self.access_log not in ACCESS_LOGS:
            raise ValueError(f"ServerConfig.access_log must be one of {', '.join(ACCESS_LOGS)}, "
                             f"not {self.access_log!r}")
        if not isinstance(self.public_docs, bool):
            raise ValueError("ServerConfig.public_docs must be True or False")
        unknown = set(self.sampling) - set(DEFAULT_SAMPLING)
        if unknown:
            raise ValueError(f"ServerConfig.sampling has unknown key(s) {', '.join(sorted(unknown))}; "
                             f"expected some of {', '.join(DEFAULT_SAMPLING)}")
        self.sampling = {**DEFAULT_SAMPLING, **self.sampling}

    @property
    def api_keys(self) -> tuple[str, ...]:
        """The accepted keys (empty: none needed)."""
        return (self.api_key,) if isinstance(self.api_key, str) else tuple(self.api_key or ())

    @property
    def loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")


def default_parallel() -> int:
    """Sequences stepped together when ``parallel`` is not given: 4 per core this process may
    use, between 4 and 32. A batch of B costs much less than B single passes until the cores
    run out of arithmetic (the weights are read once per pass); beyond that a bigger batch only
    slows every sequence down. The server lowers it further when the states would not fit in
    memory (:func:`rwkvcpp.server.scheduler.fit_in_memory`)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(4, min(32, 4 * cores))
