"""The user-facing Model: numpy in, numpy out, over the C engine; text in, text out through
the high-level methods it inherits (:mod:`rwkvcpp.high_level`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from . import _core
from ._core import ArgumentError, ModelFileError, ModelIOError, NonFiniteError, RWKVError
from ._typing import FloatArray, StrPath, TokenArray
from .format import TYPES
from .high_level import HighLevelAPI

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

__all__ = [
    "Model", "RWKVError", "ModelFileError", "ModelIOError", "ArgumentError", "NonFiniteError", "check_token_range",
    "system_info", "verify_file",
]

TYPE_NAMES = {t.id: t.name for t in TYPES.values()}

#: Token ids: a sequence of ints or an integer numpy array.
Tokens = Union[Sequence[int], "np.ndarray[Any, np.dtype[np.integer[Any]]]"]
#: One entry per sequence (its token ids, or one id), as a list or a 2-D integer array.
TokensPerSequence = Union[Sequence[Union[int, Tokens]], "np.ndarray[Any, np.dtype[np.integer[Any]]]"]
#: Several states: a (B, state_len) float32 array, or a list of B states (None: the initial state).
States = Union[FloatArray, Sequence[Optional[FloatArray]]]


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


class Model(HighLevelAPI):
    """An RWKV model loaded from an rwkv.cpp ``.bin`` file.

    ``Model(path, threads=None)``: ``path`` None loads the built-in model (a tiny byte-level
    v7, :func:`rwkvcpp.data.builtin_model_path`); ``threads`` None uses one thread per core.
    llama-cpp-python's names are accepted too: ``model_path`` for ``path``, ``n_threads`` for
    ``threads``. ``tokenizer`` picks the tokenizer of the text methods (see :attr:`tokenizer`).

    The file is memory-mapped, so loading is fast and resident memory stays close to the file
    size; each evaluation first checks that the file's size and modification time are unchanged
    and raises :class:`ModelIOError` if the file was truncated or rewritten since (rather than
    crashing with SIGBUS or computing with other numbers). ``mmap=False`` reads the whole file
    into private memory instead (as llama.cpp's ``--no-mmap``): slower to load, but the model no
    longer depends on the file at all. ``threads`` is at most 4 per core. Logits that come out
    NaN or infinite raise :class:`NonFiniteError`. ``close()`` (or leaving a ``with Model(...) as model:`` block) unmaps it and frees
    the engine; every call after that raises :class:`RWKVError`.

    Two levels of API:

    * numbers: :meth:`eval`, :meth:`eval_sequence`, :meth:`ingest`, :meth:`eval_embedding`
      take token ids and a state and return logits (or a vector) and the new state. The state
      is a flat float32 numpy array that belongs to the caller: pass it back in to continue,
      copy it to fork a conversation, :meth:`save_state` it to a file. :meth:`eval_batch` and
      :meth:`eval_embedding_batch` evaluate several sequences, each with its own state, in one
      pass over the weights;
    * text, in the shape of llama-cpp-python's ``Llama``: :meth:`tokenize`, :meth:`detokenize`,
      :meth:`generate`, :meth:`complete`, :meth:`create_completion` (also ``model(prompt)``),
      :meth:`create_chat_completion`, :meth:`chat`, :meth:`embed`, :meth:`create_embedding`.

    One Model can serve several Python threads at once, each with its own state; evaluation
    releases the GIL.
    """

    def __init__(self, path: Optional[StrPath] = None, threads: Optional[int] = None, *,
                 model_path: Optional[StrPath] = None, n_threads: Optional[int] = None,
                 tokenizer: Union[Tokenizer, StrPath, None] = None, mmap: bool = True):
        if model_path is not None:
            if path is not None:
                raise TypeError("give the model file as path or as model_path, not both")
            path = model_path
        if n_threads is not None:
            if threads is not None:
                raise TypeError("give the thread count as threads or as n_threads, not both")
            threads = n_threads
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, not {threads!r}")
        if path is None:
            from .data import builtin_model_path

            path = builtin_model_path()
        self.path = os.fspath(path)
        self._core: Optional[_core.Engine] = _core.Engine(self.path, threads or 0, bool(mmap))
        self._file_key = _file_key(self.path)
        self._model_hash: Optional[str] = None
        info = self._core.info()
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
        if tokenizer is not None:
            self.tokenizer = tokenizer

    def __repr__(self) -> str:
        closed = ", closed" if self.closed else ""
        return (
            f"Model({self.path!r}, arch={self.arch}, dtype={self.dtype}, n_layer={self.n_layer}, "
            f"n_embed={self.n_embed}, n_vocab={self.n_vocab}, threads={self.threads}{closed})"
        )

    # ---- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Frees the engine and unmaps the model file (calls running in other threads finish
        first). Every later call raises :class:`RWKVError`; closing twice is harmless."""
        engine, self._core = self._core, None
        if engine is not None:
            engine.close()

    @property
    def closed(self) -> bool:
        return self._core is None

    def __enter__(self) -> Model:
        self._require_open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def _engine(self) -> _core.Engine:
        """The engine; RWKVError once closed."""
        engine = self._core
        if engine is None:
            raise RWKVError(f"this Model ({os.path.basename(self.path)}) is closed; load the file again to use it")
        return engine

    def _require_open(self) -> None:
        self._engine  # noqa: B018 - raises once closed

    @property
    def model_hash(self) -> str:
        """SHA-256 of the model file's header and tensor table (names, types, shapes; not the
        weights): the identity saved with a state (:meth:`save_state`). Computed when first
        needed; refused if the file has changed on disk since it was loaded."""
        if self._model_hash is None:
            from .state import model_hash

            if _file_key(self.path) != self._file_key:
                raise RWKVError(f"{self.path} has changed on disk since this Model loaded it; load it again")
            self._model_hash = model_hash(self.path)
        return self._model_hash

    # ---- state ---------------------------------------------------------------------------------

    def init_state(self) -> FloatArray:
        """A fresh initial state: float32, 1-D, ``state_len`` long."""
        state = np.empty(self.state_len, dtype=np.float32)
        self._engine.init_state(state)
        return state

    def save_state(self, path: StrPath, state: FloatArray) -> None:
        """Saves the whole ``state`` to ``path`` (a ``.safetensors`` file), exactly, with this
        model's identity (architecture, sizes, a hash of the file's header and tensor table).
        The file is written under a temporary name and renamed at the end. See
        :mod:`rwkvcpp.state` for the format."""
        self._require_open()
        from .state import save_state

        save_state(path, state, self)

    def load_state(self, path: StrPath, *, strict: bool = True) -> FloatArray:
        """The state saved by :meth:`save_state` in ``path``, bit for bit (a new array).

        Raises :class:`rwkvcpp.state.StateFileError` for a damaged or truncated file, one that
        is not a saved state, or one saved with a model of other sizes. A state saved with
        another model file of the same sizes is refused too unless ``strict=False`` (for a
        quantized copy of the same weights, whose state is interchangeable)."""
        self._require_open()
        from .state import load_state

        return load_state(path, self, strict=strict)

    def load_tuned_state(self, path: StrPath) -> FloatArray:
        """The initial state of a state-tuning file (``.pth``/``.safetensors`` with
        ``blocks.N.att.time_state``, as RWKV-PEFT writes): its wkv matrices, and a fresh
        state's values everywhere else (these files hold nothing else). Not for v4 models.
        For a whole saved state use :meth:`load_state`."""
        self._require_open()
        from .conversion.state_file import load_state_file

        return load_state_file(path, self)

    def save_tuned_state(self, path: StrPath, state: FloatArray) -> None:
        """Writes only the wkv matrices of ``state`` as a state-tuning file (``.pth``, or
        ``.safetensors`` by suffix). The token-shift parts of the state are not in that format
        and are lost: to keep a whole state use :meth:`save_state`."""
        self._require_open()
        from .conversion.state_file import save_state_file

        save_state_file(path, self._check_state(state, "state"), self)

    def _state_out(self, state: Optional[FloatArray], state_out: Optional[FloatArray]) -> FloatArray:
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

    def _check_state(self, state: object, name: str, writable: bool = False) -> FloatArray:
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

    def _tokens(self, tokens: Union[int, Tokens]) -> TokenArray:
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
        if arr.dtype == object or (isinstance(tokens, (list, tuple)) and any(
                isinstance(t, (bool, np.bool_)) for t in tokens)):
            raise ArgumentError("tokens must be integers, not bools: True and False are not token ids")
        if arr.dtype.kind not in "iu":
            # floats holding whole numbers are accepted; strings, objects, bools are not
            if arr.dtype.kind != "f" or not np.all(np.equal(np.mod(arr, 1), 0)):
                raise ArgumentError(f"tokens must be integers, got {arr.dtype} values such as {arr[0]!r}")
        check_token_range(arr, self.n_vocab)
        return np.ascontiguousarray(arr, dtype=np.int32)

    def eval(self, token: int, state: Optional[FloatArray] = None, *, state_out: Optional[FloatArray] = None,
             logits_out: Optional[FloatArray] = None) -> tuple[FloatArray, FloatArray]:
        """Evaluates one token. Returns ``(logits, new_state)``; ``state`` itself is not modified
        unless it is passed as ``state_out`` too."""
        if isinstance(token, (bool, np.bool_)) or not isinstance(token, (int, np.integer)):
            raise TypeError(f"token must be an int, not {type(token).__name__}")
        return self.eval_sequence([int(token)], state, state_out=state_out, logits_out=logits_out)

    def eval_sequence(self, tokens: Tokens, state: Optional[FloatArray] = None, all_logits: bool = False, *,
                      state_out: Optional[FloatArray] = None,
                      logits_out: Optional[FloatArray] = None) -> tuple[FloatArray, FloatArray]:
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

    def ingest(self, tokens: Tokens, state: Optional[FloatArray] = None) -> FloatArray:
        """Runs tokens through the model for their effect on the state only (no head)."""
        toks = self._tokens(tokens)
        new_state = self._state_out(state, None)
        self._engine.eval(toks, new_state, None, False)
        return new_state

    def eval_embedding(self, tokens: Tokens, state: Optional[FloatArray] = None,
                       normalize: bool = True) -> tuple[FloatArray, FloatArray]:
        """RWKV's free sentence embedding: the last token's final hidden state (after ln_out).
        Returns ``(vector, new_state)``; the vector has unit length when ``normalize``. For text
        in and vectors out, see :meth:`embed`."""
        toks = self._tokens(tokens)
        new_state = self._state_out(state, None)
        out = np.empty(self.n_embed, dtype=np.float32)
        self._engine.eval_embedding(toks, new_state, out)
        if normalize:
            norm = float(np.linalg.norm(out))
            if norm > 0:
                out /= norm
        return out, new_state


    # ---- several sequences at once ------------------------------------------------------------

    def eval_batch(self, tokens_per_sequence: TokensPerSequence, states: Optional[States] = None, *,
                   all_logits: bool = False, states_out: Optional[States] = None,
                   ) -> tuple[Union[FloatArray, list[FloatArray]], States]:
        """Evaluates several sequences in one pass over the weights: B conversations decoding a
        token each, prompts being ingested, or both at once. Reading the weights is most of what a
        decoded token costs, so B sequences together cost far less than B calls of :meth:`eval`.

        ``tokens_per_sequence``: one entry per sequence, each its new tokens (a sequence of ids,
        or one int for a single token): ``[t0, t1, t2]`` decodes three sequences one token each,
        ``[prompt_ids, t1]`` ingests a prompt beside a decoding sequence. Sequences may differ in
        length; every one needs at least one token.

        ``states``: None (every sequence starts from the initial state), a ``(B, state_len)``
        float32 array, or a list of B entries, each a state as :meth:`eval` takes it or None for
        the initial state. The states are not modified, unless they are also ``states_out``.

        ``states_out``: where the new states go. None: a new ``(B, state_len)`` array; or a
        ``(B, state_len)`` array, or a list of B writable 1-D arrays. Entry i may be the same array
        as ``states[i]`` (updated in place, no copy: what a decoding loop wants); it must not
        overlap any other sequence's state.

        Returns ``(logits, new_states)``: logits of each sequence's last token as a ``(B, n_vocab)``
        array, or with ``all_logits`` a list of B arrays ``(len(tokens_i), n_vocab)``; new_states
        is ``states_out``, or the new array.

        Each sequence gets exactly the logits and state that :meth:`eval_sequence` gives it alone
        (bit for bit on x86-64; sequences of up to 8 tokens take the matrix-vector kernels, longer
        ones the prompt kernels, whatever else is in the batch), so sampling from them gives the
        same text as one sequence at a time. Errors name the sequence: ``sequence 3: token ...``.
        """
        toks = self._batch_tokens(tokens_per_sequence)
        states_in = self._batch_states(states, len(toks))
        new_states, outs = self._batch_states_out(states_out, len(toks))
        if all_logits:
            rows = [np.empty((len(t), self.n_vocab), np.float32) for t in toks]
            buffers: list[Optional[FloatArray]] = [row.reshape(-1) for row in rows]
            logits: Union[FloatArray, list[FloatArray]] = rows
        else:
            logits = np.empty((len(toks), self.n_vocab), np.float32)
            buffers = list(logits)
        self._engine.eval_batch(toks, states_in, outs, buffers, [None] * len(toks), bool(all_logits))
        return logits, new_states

    def eval_embedding_batch(self, tokens_per_sequence: TokensPerSequence, states: Optional[States] = None,
                             *, normalize: bool = True,
                             states_out: Optional[States] = None) -> tuple[FloatArray, States]:
        """:meth:`eval_embedding` for several sequences in one pass over the weights (see
        :meth:`eval_batch` for the arguments). Returns ``(vectors, new_states)``: vectors is a
        ``(B, n_embed)`` array, each row of unit length when ``normalize``."""
        toks = self._batch_tokens(tokens_per_sequence)
        states_in = self._batch_states(states, len(toks))
        new_states, outs = self._batch_states_out(states_out, len(toks))
        vectors = np.empty((len(toks), self.n_embed), np.float32)
        self._engine.eval_batch(toks, states_in, outs, [None] * len(toks), list(vectors), False)
        if normalize:
            for vector in vectors:  # as eval_embedding does it, for the same bits
                norm = float(np.linalg.norm(vector))
                if norm > 0:
                    vector /= norm
        return vectors, new_states

    def _eval_rows(self, tokens: list[TokenArray], states: list[FloatArray], logits: list[Optional[FloatArray]]) -> None:
        """The batch loop's pass (:mod:`rwkvcpp.batch`), without eval_batch's checks: ``tokens``
        checked int32 arrays, ``states`` distinct owned float32 states updated in place,
        ``logits[i]`` a float32 buffer of n_vocab for the last token's logits, or None (the
        head is skipped: a prompt read only in part)."""
        self._engine.eval_batch(tokens, states, states, logits, [None] * len(tokens), False)

    def _batch_tokens(self, tokens_per_sequence: TokensPerSequence) -> list[TokenArray]:
        if isinstance(tokens_per_sequence, (str, bytes)) or not hasattr(tokens_per_sequence, "__len__"):
            raise TypeError("tokens_per_sequence must be a list with one entry (token ids, or one id) per sequence, "
                            f"not {type(tokens_per_sequence).__name__}")
        if len(tokens_per_sequence) == 0:
            raise ArgumentError("no sequences to evaluate: tokens_per_sequence is empty")
        toks = []
        for i, tokens in enumerate(tokens_per_sequence):
            try:
                toks.append(self._tokens(tokens))
            except ArgumentError as e:
                raise ArgumentError(f"sequence {i}: {e}") from None
        return toks

    def _batch_states(self, states: Optional[States], n: int) -> list[Optional[FloatArray]]:
        """The input states as a list of n contiguous float32 arrays, None for the initial state."""
        if states is None:
            return [None] * n
        if isinstance(states, np.ndarray):
            if states.dtype != np.float32 or states.shape != (n, self.state_len):
                raise ArgumentError(f"states is a {states.dtype} array of shape {states.shape}; {n} sequences of this "
                                    f"model need float32 ({n}, {self.state_len})")
            return list(np.ascontiguousarray(states))
        entries = self._batch_list(states, "states", n)
        return [None if s is None else np.ascontiguousarray(self._check_state(s, f"states[{i}]"))
                for i, s in enumerate(entries)]

    def _batch_states_out(self, states_out: Optional[States], n: int) -> tuple[States, list[FloatArray]]:
        """(what eval_batch returns as the new states, the list of n arrays written)."""
        if states_out is None:
            states_out = np.empty((n, self.state_len), np.float32)
        if isinstance(states_out, np.ndarray):
            if (states_out.dtype != np.float32 or states_out.shape != (n, self.state_len)
                    or not states_out.flags.c_contiguous or not states_out.flags.writeable):
                raise ArgumentError(f"states_out must be a writable, contiguous float32 array of shape "
                                    f"({n}, {self.state_len}), not {states_out.dtype} {states_out.shape}")
            return states_out, list(states_out)
        entries = self._batch_list(states_out, "states_out", n)
        return states_out, [self._check_state(s, f"states_out[{i}]", writable=True) for i, s in enumerate(entries)]

    @staticmethod
    def _batch_list(entries: object, name: str, n: int) -> list[Any]:
        if not isinstance(entries, (list, tuple)):
            raise TypeError(f"{name} must be a (B, state_len) array or a list of B states, not {type(entries).__name__}")
        if len(entries) != n:
            raise ArgumentError(f"{name} has {len(entries)} entries for {n} sequences")
        return list(entries)


def _file_key(path: str) -> tuple[int, int, int, int]:
    """What tells that a file was replaced or rewritten: device, inode, size, modification time."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def verify_file(path: StrPath) -> list[dict[str, Any]]:
    """Decodes every tensor of an rwkv.cpp model file and returns one entry per tensor that holds
    NaN or infinite values (bad floats, or quantized blocks with non-finite scales): ``name``,
    ``n_bad`` and ``first_bad`` (flat index). Empty when every value is finite."""
    return [{"name": name, "n_bad": n_bad, "first_bad": first}
            for name, n_bad, first in _core.verify_file(os.fspath(path))]


def system_info() -> dict[str, object]:
    """What the engine runs with on this machine: kernel level and CPU features."""
    return {
        "kernels": _core.kernel_level(),
        "cpu_features": _core.cpu_features().split(),
        "default_threads": os.cpu_count() or 1,
    }
