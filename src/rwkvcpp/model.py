"""The user-facing Model: numpy in, numpy out, over the C engine."""

from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from . import _core
from ._core import ArgumentError, ModelFileError, ModelIOError, RWKVError
from .format import TYPES

__all__ = [
    "Model", "RWKVError", "ModelFileError", "ModelIOError", "ArgumentError", "check_token_range", "system_info",
]

TYPE_NAMES = {t.id: t.name for t in TYPES.values()}

Tokens = Union[Sequence[int], np.ndarray]


def check_token_range(tokens: Tokens, n_vocab: int) -> None:
    """Raises ArgumentError for the first token id outside ``0..n_vocab - 1``, naming it and its
    position. Model and Generator both check with this, so their messages are the same; the C
    engine checks again for its own callers, but only after the ids are narrowed to int32, where
    an id such as 2**32 + 1 would already have wrapped to a valid one."""
    ids = np.asarray(tokens)
    bad = np.flatnonzero((ids < 0) | (ids >= n_vocab))
    if bad.size:
        i = int(bad[0])
        raise ArgumentError(
            f"token {int(ids[i])} at position {i} is out of range: this model's vocabulary is "
            f"0..{n_vocab - 1} (n_vocab {n_vocab})"
        )


class Model:
    """An RWKV model loaded from an rwkv.cpp ``.bin`` file.

    The file is memory-mapped, so loading is fast and resident memory stays close to the file
    size. The recurrent state is a flat float32 numpy array that belongs to the caller: pass it
    back in to continue, copy it to fork a conversation, save it with ``numpy.save``.

    One Model can serve several Python threads at once, each with its own state; evaluation
    releases the GIL.
    """

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None):
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, not {threads!r}")
        self.path = os.fspath(path)
        self._engine = _core.Engine(self.path, threads or 0)
        info = self._engine.info()
        self.arch: str = info["arch"]
        self.n_vocab: int = info["n_vocab"]
        self.n_embed: int = info["n_embed"]
        self.n_layer: int = info["n_layer"]
        self.n_head: int = info["n_head"]
        self.head_size: int = info["head_size"]
        self.n_ffn: int = info["n_ffn"]
        self.dtype: str = TYPE_NAMES.get(info["data_type"], str(info["data_type"]))
        self.state_len: int = info["state_len"]
        self.file_size: int = info["file_size"]
        self.file_version: int = info["file_version"]
        self.threads: int = info["n_threads"]

    def __repr__(self) -> str:
        return (
            f"Model({self.path!r}, arch={self.arch}, dtype={self.dtype}, n_layer={self.n_layer}, "
            f"n_embed={self.n_embed}, n_vocab={self.n_vocab}, threads={self.threads})"
        )

    # ---- state ---------------------------------------------------------------------------------

    def init_state(self) -> np.ndarray:
        """A fresh initial state: float32, 1-D, ``state_len`` long."""
        state = np.empty(self.state_len, dtype=np.float32)
        self._engine.init_state(state)
        return state

    def load_state_file(self, path: Union[str, os.PathLike]) -> np.ndarray:
        """A state whose wkv matrices come from a state-tuning file (``.pth``/``.safetensors``
        with ``blocks.N.att.time_state``); see :func:`rwkvcpp.conversion.state_file.load_state_file`."""
        from .conversion.state_file import load_state_file

        return load_state_file(path, self)

    def save_state_file(self, path: Union[str, os.PathLike], state: np.ndarray) -> None:
        """Writes the wkv matrices of ``state`` as a state file (``.pth``, or ``.safetensors`` by
        suffix); see :func:`rwkvcpp.conversion.state_file.save_state_file`."""
        from .conversion.state_file import save_state_file

        save_state_file(path, self._check_state(state, "state"), self)

    def _state_out(self, state, state_out) -> np.ndarray:
        """The array the new state is written into: state_out if given, else a copy of state."""
        if state_out is not None:
            self._check_state(state_out, "state_out", writable=True)
            if state is None:
                self._engine.init_state(state_out)
            elif state is not state_out:
                np.copyto(state_out, self._check_state(state, "state"))
            return state_out
        if state is None:
            return self.init_state()
        return np.array(self._check_state(state, "state"), dtype=np.float32, copy=True)

    def _check_state(self, state, name: str, writable: bool = False) -> np.ndarray:
        if not isinstance(state, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, not {type(state).__name__}")
        if state.dtype != np.float32:
            raise ArgumentError(f"{name} must be a float32 array (as init_state() returns), not {state.dtype}")
        if state.ndim != 1 or state.shape[0] != self.state_len:
            raise ArgumentError(
                f"{name} has shape {state.shape}; this {self.arch} model's state is ({self.state_len},)"
            )
        if writable and (not state.flags.c_contiguous or not state.flags.writeable):
            raise ArgumentError(f"{name} must be a writable, contiguous float32 array")
        return state

    # ---- evaluation ----------------------------------------------------------------------------

    def _tokens(self, tokens: Tokens) -> np.ndarray:
        try:
            arr = np.asarray(tokens)
        except (TypeError, ValueError) as e:
            raise ArgumentError(f"tokens must be a 1-D sequence of ints: {e}") from None
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1:
            raise ArgumentError(f"tokens must be a 1-D sequence of ints, got shape {arr.shape}")
        if arr.size == 0:
            raise ArgumentError("tokens is empty: there is nothing to evaluate")
        if arr.dtype.kind not in "iu":
            # floats holding whole numbers are accepted; strings, objects, bools are not
            if arr.dtype.kind != "f" or not np.all(np.equal(np.mod(arr, 1), 0)):
                raise ArgumentError(f"tokens must be integers, got {arr.dtype} values such as {arr[0]!r}")
        check_token_range(arr, self.n_vocab)
        return np.ascontiguousarray(arr, dtype=np.int32)

    def eval(self, token: int, state: Optional[np.ndarray] = None, *, state_out: Optional[np.ndarray] = None,
             logits_out: Optional[np.ndarray] = None):
        """Evaluates one token. Returns ``(logits, new_state)``; ``state`` itself is not modified
        unless it is passed as ``state_out`` too."""
        if isinstance(token, (bool, np.bool_)) or not isinstance(token, (int, np.integer)):
            raise TypeError(f"token must be an int, not {type(token).__name__}")
        return self.eval_sequence([int(token)], state, state_out=state_out, logits_out=logits_out)

    def eval_sequence(self, tokens: Tokens, state: Optional[np.ndarray] = None, all_logits: bool = False, *,
                      state_out: Optional[np.ndarray] = None, logits_out: Optional[np.ndarray] = None):
        """Evaluates a sequence layer by layer over all tokens at once.

        Returns ``(logits, new_state)``: logits of the last token, shape (n_vocab,), or of every
        token, shape (len(tokens), n_vocab), when ``all_logits``.
        """
        toks = self._tokens(tokens)
        new_state = self._state_out(state, state_out)
        shape = (len(toks), self.n_vocab) if all_logits else (self.n_vocab,)
        if logits_out is None:
            logits = np.empty(shape, dtype=np.float32)
        else:
            logits = logits_out
            if logits.shape != shape or logits.dtype != np.float32 or not logits.flags.c_contiguous:
                raise ArgumentError(f"logits_out must be a contiguous float32 array of shape {shape}")
        self._engine.eval(toks, new_state, logits.reshape(-1), bool(all_logits))
        return logits, new_state

    def ingest(self, tokens: Tokens, state: Optional[np.ndarray] = None) -> np.ndarray:
        """Runs tokens through the model for their effect on the state only (no head)."""
        toks = self._tokens(tokens)
        new_state = self._state_out(state, None)
        self._engine.eval(toks, new_state, None, False)
        return new_state

    def embed(self, tokens: Tokens, state: Optional[np.ndarray] = None, normalize: bool = True):
        """RWKV's free sentence embedding: the last token's final hidden state (after ln_out).
        Returns ``(vector, new_state)``; the vector has unit length when ``normalize``."""
        toks = self._tokens(tokens)
        new_state = self._state_out(state, None)
        out = np.empty(self.n_embed, dtype=np.float32)
        self._engine.eval_embedding(toks, new_state, out)
        if normalize:
            norm = float(np.linalg.norm(out))
            if norm > 0:
                out /= norm
        return out, new_state

    # ---- text ----------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        """The tokenizer used for text: by default the built-in one for ``n_vocab`` (World for
        65536, GPT-NeoX 20B for 50277/50304, bytes for 256), loaded when first used. Assign a
        ``Tokenizer``, a tokenizer name or a vocabulary file path to use another; ``None``
        goes back to the default."""
        tok = getattr(self, "_tokenizer", None)
        if tok is None:
            from .tokenizer import Tokenizer

            tok = self._tokenizer = Tokenizer.for_vocab(self.n_vocab)
        return tok

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        from .tokenizer import Tokenizer

        if value is not None and not isinstance(value, Tokenizer):
            value = Tokenizer.from_name(value, n_vocab=self.n_vocab)
        self._tokenizer = value

    def generate(self, prompt, max_tokens: Optional[int] = 256, state: Optional[np.ndarray] = None,
                 stream: bool = False, **sampling):
        """Continues ``prompt`` (text or token ids) and returns the generated text, or with
        ``stream=True`` an iterator of text pieces as they are generated.

        ``sampling`` takes the fields of :class:`~rwkvcpp.sampling.SamplingParams`
        (temperature, top_p, top_k, min_p, presence_penalty, frequency_penalty, penalty_decay,
        stop, stop_tokens, seed, ...). ``state`` (not modified) continues an earlier context.
        For the final state, usage counts and finish reason, use
        :class:`rwkvcpp.generate.Generator`.
        """
        from .generate import Generator
        from .sampling import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, **sampling)
        generator = Generator(self)
        if stream:
            return (chunk.text for chunk in generator.stream(prompt, params, state) if chunk.text)
        return generator.complete(prompt, params, state).text


def system_info() -> dict:
    """What the engine runs with on this machine: kernel level and CPU features."""
    return {
        "kernels": _core.kernel_level(),
        "cpu_features": _core.cpu_features().split(),
        "default_threads": os.cpu_count() or 1,
    }
