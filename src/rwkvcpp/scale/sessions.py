"""Saved sessions on Ray Serve replicas: one shared folder, the recent states held warm.

Every replica reads and writes the same ``states_dir`` (storage all nodes mount), so a session
saved through one replica continues on any other. Each replica also keeps the states it saved or
used last in memory, and tells Serve which through Serve's model multiplexing (a warm state's id
is the "model id"): a request whose ``serve_multiplexed_model_id`` header names a state goes to
a replica holding it warm, unless those replicas are full, and skips the read from shared
storage. Serve learns of a newly saved state within a fraction of a second of the save.
"""

from __future__ import annotations

import asyncio
import os
import threading

import numpy as np
from ray import serve

from ..server.errors import OpenAIError
from ..server.sessions import SessionStore

__all__ = ["WarmSessions"]


class WarmSessions(SessionStore):
    """``store``'s folder and bound, with up to ``capacity`` states kept in memory and reported to
    Serve. ``loop``: the replica's event loop, on which Serve's multiplexing runs; ``load`` and
    ``save`` are called from worker threads, as the server's routes call them."""

    def __init__(self, store: SessionStore, model, capacity: int, loop: asyncio.AbstractEventLoop):
        super().__init__(store.folder, store.max_states)
        self._model = model
        self._loop = loop
        self._just_saved: dict[str, np.ndarray] = {}  # handed to the multiplexer without a read
        self._just_saved_lock = threading.Lock()

        async def warm(state_id: str) -> np.ndarray:
            with self._just_saved_lock:
                state = self._just_saved.pop(state_id, None)
            if state is not None:
                return state
            return await asyncio.get_running_loop().run_in_executor(None, SessionStore.load, self, self._model,
                                                                    state_id)

        # A closure, not a method: the capacity is this replica's setting, and Serve keeps its
        # cache on the decorated object.
        self._warm = serve.multiplexed(max_num_models_per_replica=capacity)(warm)

    def save(self, model, state: np.ndarray, tokens: int) -> dict:
        saved = super().save(model, state, tokens)
        with self._just_saved_lock:
            self._just_saved[saved["id"]] = np.array(state, dtype=np.float32)
        self._on_loop(self._warm(saved["id"]))
        return saved

    def load(self, model, state_id: str) -> np.ndarray:
        path = self._path(state_id)  # a bad id is refused before Serve sees it
        state = self._on_loop(self._warm(state_id))
        try:
            os.utime(path)  # still saved (another replica may have deleted it), and recently used
        except FileNotFoundError:
            raise OpenAIError(404, f"no saved state {state_id!r} (it may have been deleted to make room)",
                              param="rwkv_state", code="state_not_found") from None
        return state.copy()  # the warm copy stays as it was saved, whatever a request does with its own

    def _on_loop(self, coroutine):
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            coroutine.close()
            raise RuntimeError("WarmSessions.load and save block: call them from a worker thread")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()
