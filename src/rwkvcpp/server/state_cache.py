"""An LRU cache of model states keyed by the tokens that produced them.

An RNN's whole context is its state, so a request whose prompt starts with the tokens of an
earlier prompt (plus that request's reply, in a chat) only has to evaluate the rest: the next
turn of a conversation costs its new tokens, not the whole history. ``lookup`` finds the
longest cached *proper* prefix of a prompt (at least one token is always left to evaluate, so
there are logits to sample from).

Bounded by entry count and by bytes (states plus keys). Thread-safe; stored states are
read-only arrays, which the engine copies before updating.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional, Sequence

import numpy as np

__all__ = ["StateCache"]


class StateCache:
    def __init__(self, max_entries: int = 64, max_bytes: int = 512 << 20):
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("StateCache bounds must be 0 or more")
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lengths: dict[int, int] = {}  # key length in tokens -> how many keys have it
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _key(tokens) -> bytes:
        return np.asarray(tokens, dtype=np.int32).tobytes()

    @staticmethod
    def _size(key: bytes, state: np.ndarray) -> int:
        return len(key) + state.nbytes

    def lookup(self, tokens: Sequence[int]) -> tuple[int, Optional[np.ndarray]]:
        """``(n, state)``: the state after the first ``n`` tokens, for the longest cached prefix
        shorter than ``tokens``; ``(0, None)`` when there is none."""
        arr = np.asarray(tokens, dtype=np.int32)
        with self._lock:
            for length in sorted(self._lengths, reverse=True):
                if length >= arr.size:
                    continue
                key = arr[:length].tobytes()
                state = self._entries.get(key)
                if state is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return length, state
            self.misses += 1
        return 0, None

    def put(self, tokens: Sequence[int], state: np.ndarray) -> bool:
        """Stores (a read-only copy of) ``state`` as the state after ``tokens``; returns whether
        it was stored (not when the cache is off or the entry alone is over the byte bound)."""
        if self.max_entries == 0 or len(tokens) == 0:
            return False
        key = self._key(tokens)
        size = self._size(key, state)
        if size > self.max_bytes:
            return False
        stored = np.array(state, dtype=np.float32, copy=True)
        stored.flags.writeable = False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._forget(key, old)
            self._entries[key] = stored
            self._lengths[len(tokens)] = self._lengths.get(len(tokens), 0) + 1
            self.bytes += size
            while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
                old_key, old_state = self._entries.popitem(last=False)
                self._forget(old_key, old_state)
        return True

    def _forget(self, key: bytes, state: np.ndarray) -> None:
        length = len(key) // 4
        self.bytes -= self._size(key, state)
        left = self._lengths[length] - 1
        if left:
            self._lengths[length] = left
        else:
            del self._lengths[length]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._lengths.clear()
            self.bytes = 0

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self.bytes, "hits": self.hits, "misses": self.misses,
                    "max_entries": self.max_entries, "max_bytes": self.max_bytes}
