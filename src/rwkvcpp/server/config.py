"""The server's settings: limits, defaults and sampling defaults, in one dataclass.

Nothing here needs FastAPI, so ``ServerConfig`` can be built (and checked) before the optional
server dependencies are imported. It is the one place the settings are checked: its errors name
each setting as ``ServerConfig.<field>``, which ``rwkvcpp serve`` turns into its flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

from ..sampling import CHAT_DEFAULTS

__all__ = ["ServerConfig", "DEFAULT_SAMPLING"]

# Used for any sampling field a request leaves out: the settings of `rwkvcpp chat`.
DEFAULT_SAMPLING = CHAT_DEFAULTS


@dataclass
class ServerConfig:
    """Settings of one server. Every limit is enforced with a 400 (or 413/503) in OpenAI's
    error shape, never by silently truncating.

    host, port:          where ``rwkvcpp serve`` listens (loopback only by default)
    model_name:          the model id shown by /v1/models and in responses (default: the
                         file name without ``.bin``); requests may name any model
    api_key:             when set, /v1/* requests need ``Authorization: Bearer <api_key>``
    max_body_bytes:      largest request body (413 beyond)
    max_prompt_tokens:   longest prompt, or embedding input, in tokens
    max_tokens_cap:      the most ``max_tokens`` a request may ask for
    default_max_tokens:  ``max_tokens`` of a request that gives none
    max_n:               the most choices (``n``) per request
    max_batch:           the most prompts (completions) or inputs (embeddings) per request
    max_stop:            the most stop strings per request
    max_concurrent:      requests evaluated at once (worker threads); the model interleaves
                         their tokens
    max_queue:           requests waiting for a worker beyond those; more get a 503
    cache_entries, cache_bytes: bounds of the state cache (states keyed by token prefix, so a
                         multi-turn chat evaluates only its new turn); 0 entries turns it off
    sampling:            defaults of the sampling fields a request leaves out
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model_name: Optional[str] = None
    api_key: Optional[str] = None
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 16384
    max_tokens_cap: int = 4096
    default_max_tokens: int = 512
    max_n: int = 8
    max_batch: int = 64
    max_stop: int = 16
    max_concurrent: int = 4
    max_queue: int = 32
    cache_entries: int = 64
    cache_bytes: int = 512 << 20
    sampling: dict = field(default_factory=lambda: dict(DEFAULT_SAMPLING))

    def __post_init__(self):
        positive = ("max_body_bytes", "max_prompt_tokens", "max_tokens_cap", "max_n", "max_batch",
                    "max_concurrent")
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
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ValueError("ServerConfig.api_key must be a non-empty string or None")
        unknown = set(self.sampling) - set(DEFAULT_SAMPLING)
        if unknown:
            raise ValueError(f"ServerConfig.sampling has unknown key(s) {', '.join(sorted(unknown))}; "
                             f"expected some of {', '.join(DEFAULT_SAMPLING)}")
        self.sampling = {**DEFAULT_SAMPLING, **self.sampling}
