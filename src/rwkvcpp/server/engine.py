"""The engine's side of the server: the loaded model, its generator and tokenizer, the state
cache, the settings and the counters /health reports. One :class:`Engine` per app, on
``app.state.engine``.

The state cache (:mod:`.state_cache`) keeps the state after each prompt minus its last token and
after each prompt plus its reply, so the next turn of a chat starts from the longest cached
prefix of its tokens.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np

from ..completion import end_tokens, model_id
from ..generate import Generator
from .config import ServerConfig
from .state_cache import StateCache

__all__ = ["Engine"]


class Engine:
    """What every request reads and the scheduler runs. ``generator`` may be replaced (tests
    put in a scripted one); a job keeps the one it started with."""

    def __init__(self, model, config: ServerConfig):
        self.model = model
        self.config = config
        self.generator = Generator(model)
        self.tokenizer = self.generator.tokenizer
        self.model_id = model_id(model, config.model_name)
        self.created = int(time.time())
        self.end_tokens: tuple[int, ...] = end_tokens(self.tokenizer)
        self.cache = StateCache(config.cache_entries, config.cache_bytes)
        # Where every prompt starts (None: a fresh state); `rwkvcpp serve --state` sets it. The
        # cache stays valid because all its states grew from this one.
        self.initial_state: Optional[np.ndarray] = None
        self._counters_lock = threading.Lock()
        self.counters = {
            "requests": 0,
            "prompt_tokens": 0,  # prompt tokens of all requests
            "prompt_tokens_evaluated": 0,  # of those, the ones run through the model (not cached)
            "completion_tokens": 0,
            "embedding_tokens": 0,
        }

    def count(self, **amounts: int) -> None:
        with self._counters_lock:
            for name, amount in amounts.items():
                self.counters[name] += amount

    def stats(self) -> dict:
        """The counters and the state cache's figures."""
        with self._counters_lock:
            counters = dict(self.counters)
        return {**counters, "cache": self.cache.stats()}

    # -- the state cache around a generation -------------------------------------------------

    def prompt_start(self, ids: list[int], count_prompt: bool,
                     start: Optional[np.ndarray] = None) -> tuple[int, Optional[np.ndarray], list[int], bool]:
        """``(cached, state, todo, cacheable)``: generation of prompt ``ids`` goes on from ``state``
        (None: a fresh one) by reading ``todo``; ``cached`` tokens came from the state cache.
        ``cacheable``: states grown from this prompt belong in the cache (:meth:`prompt_read`,
        :meth:`reply_finished`). Counts the prompt; evaluates nothing.

        With ``count_prompt`` (global_penalty) the sampler must see the whole prompt, so the
        cache is not looked up; a prompt that continues a ``start`` state (a saved session)
        bypasses the cache, whose states all grew from the initial one.
        """
        cacheable = start is None and self.cache.max_entries > 0
        cached, state = self.cache.lookup(ids) if cacheable and not count_prompt else (0, None)
        if cached == 0:
            state = start if start is not None else self.initial_state
        todo = list(ids[cached:])
        self.count(prompt_tokens=len(ids), prompt_tokens_evaluated=len(todo))
        return cached, state, todo, cacheable

    def prompt_read(self, ids: list[int], state: np.ndarray) -> None:
        """``state`` is the state after all of ``ids`` but the last token: a retry, or a prompt
        that goes on differently, starts there."""
        self.cache.put(ids[:-1], state)

    def reply_finished(self, ids, result) -> None:
        """Caches the state after prompt ``ids`` and its reply (``result``, a Generation): the
        next turn of a chat starts there."""
        final = getattr(result, "state", None)
        if isinstance(final, np.ndarray):
            self.cache.put(list(ids) + list(result.tokens), final)

    def read_whole(self, ids: list[int], start: Optional[np.ndarray] = None) -> np.ndarray:
        """The state after all of ``ids`` (from ``start``, else the initial state through the
        cache), for a saved session. Called in a worker thread, beside the scheduler's steps."""
        state, todo = start, ids
        if start is None:
            cached, state = self.cache.lookup(ids) if self.cache.max_entries > 0 else (0, None)
            state = self.initial_state if cached == 0 else state
            todo = ids[cached:]
        self.count(prompt_tokens=len(ids), prompt_tokens_evaluated=len(todo))
        if not todo:
            return np.array(state, dtype=np.float32)
        return self._ingest(todo, state)

    def _ingest(self, tokens: list[int], state):
        ingest = getattr(self.model, "ingest", None)
        if ingest is not None:
            return ingest(tokens, state)
        return self.model.eval_sequence(tokens, state)[1]
