"""Saved sessions: RWKV's state is a whole conversation in a fixed size, so a client can save it
under an id and resume from it later, on this server or on another that mounts the same folder.

States are files in one configured folder (``ServerConfig.states_dir``), written with
:func:`rwkvcpp.state.save_state` (the model's identity inside, checked on load), named by ids
the server makes (``state_`` and 24 hex digits: a client never chooses a path), at most
``max_states`` of them: saving one more deletes the least recently used.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from typing import Optional

import numpy as np

from .errors import OpenAIError

__all__ = ["SessionStore", "STATE_ID"]

STATE_ID = re.compile(r"state_[0-9a-f]{24}")
SUFFIX = ".safetensors"


class SessionStore:
    def __init__(self, folder: str, max_states: int):
        self.folder = folder
        self.max_states = max_states
        self._lock = threading.Lock()
        os.makedirs(folder, exist_ok=True)

    def _path(self, state_id: str) -> str:
        if not isinstance(state_id, str) or not STATE_ID.fullmatch(state_id):
            raise OpenAIError(400, f"{state_id!r} is not a saved state's id (state_ and 24 hex digits)",
                              param="rwkv_state", code="invalid_state_id")
        return os.path.join(self.folder, state_id + SUFFIX)

    def save(self, model, state: np.ndarray, tokens: int) -> dict:
        """Saves ``state`` (after ``tokens`` tokens) under a new id; returns its description."""
        state_id = "state_" + secrets.token_hex(12)
        path = self._path(state_id)
        model.save_state(path, state)
        with self._lock:
            self._evict()
        return self._describe(state_id, path, tokens)

    def load(self, model, state_id: str) -> np.ndarray:
        """The saved state ``state_id``, checked against ``model``; 404 if there is none."""
        path = self._path(state_id)
        try:
            state = model.load_state(path, strict=False)
        except FileNotFoundError:
            raise OpenAIError(404, f"no saved state {state_id!r} (it may have been deleted to make room)",
                              param="rwkv_state", code="state_not_found") from None
        except ValueError as e:  # StateFileError: damaged, or saved with another model
            raise OpenAIError(400, f"saved state {state_id!r} cannot be used: {e}", param="rwkv_state",
                              code="invalid_state") from None
        os.utime(path)  # recently used: kept longest
        return state

    def describe(self, state_id: str) -> dict:
        path = self._path(state_id)
        if not os.path.isfile(path):
            raise OpenAIError(404, f"no saved state {state_id!r}", param="rwkv_state", code="state_not_found")
        return self._describe(state_id, path, None)

    def delete(self, state_id: str) -> dict:
        path = self._path(state_id)
        try:
            os.unlink(path)
        except FileNotFoundError:
            raise OpenAIError(404, f"no saved state {state_id!r}", param="rwkv_state", code="state_not_found") \
                from None
        return {"id": state_id, "object": "rwkv.state.deleted", "deleted": True}

    def _evict(self) -> None:
        entries = []
        for name in os.listdir(self.folder):
            if name.endswith(SUFFIX) and STATE_ID.fullmatch(name[: -len(SUFFIX)]):
                try:
                    entries.append((os.stat(os.path.join(self.folder, name)).st_mtime_ns, name))
                except FileNotFoundError:  # deleted meanwhile (another replica)
                    pass
        entries.sort()
        for _, name in entries[: max(0, len(entries) - self.max_states)]:
            try:
                os.unlink(os.path.join(self.folder, name))
            except FileNotFoundError:
                pass

    @staticmethod
    def _describe(state_id: str, path: str, tokens: Optional[int]) -> dict:
        info = os.stat(path)
        out = {"id": state_id, "object": "rwkv.state", "last_used": int(info.st_mtime), "bytes": info.st_size}
        if tokens is not None:
            out["tokens"] = tokens
        return out
