"""Tokenizers for RWKV models.

``Tokenizer.for_vocab(n_vocab)`` picks the tokenizer that matches a model's
vocabulary size; ``Tokenizer.from_name(...)`` overrides the choice:

* ``"world"``: the RWKV World tokenizer (RWKV-4 World and RWKV-5/6/7 models, 65536)
* ``"20b"``:   the GPT-NeoX-20B tokenizer (RWKV-4 Pile and Raven, 50277 or 50304);
  needs the optional ``tokenizers`` package
* ``"bytes"``: one token per byte (byte-level models, 256)
* a path: a World-style vocabulary ``.txt`` or a ``tokenizers`` ``.json`` file

Token ids that exist in the model but not in the tokenizer (end of text,
padding) decode to nothing.
"""

from __future__ import annotations

import codecs
import os
import threading
from collections.abc import Iterable
from typing import Protocol

__all__ = ["StreamDecoder", "Tokenizer"]

_WORLD_N_VOCAB = 65536
_NEOX_N_VOCABS = (50277, 50304)
_BYTE_N_VOCAB = 256
_DEFAULT_N_VOCAB = {"world": _WORLD_N_VOCAB, "20b": _NEOX_N_VOCABS[0], "bytes": _BYTE_N_VOCAB}

_NAMES = {
    "world": "world",
    "rwkv_vocab_v20230424": "world",
    "20b": "20b",
    "20b_tokenizer": "20b",
    "neox": "20b",
    "gpt-neox": "20b",
    "bytes": "bytes",
    "byte": "bytes",
}

# Loading the World vocabulary takes a noticeable fraction of a second, and
# tokenizers hold no per-use state, so the built-in ones are shared.
_cache: dict[tuple[str, int | None], Tokenizer] = {}
_cache_lock = threading.Lock()


class _Backend(Protocol):
    """What a vocabulary's implementation (:mod:`.world`, :mod:`.neox`, :mod:`.byte`) provides."""

    n_vocab: int

    def encode(self, text: str | bytes | bytearray | memoryview) -> list[int]: ...

    def decode_bytes(self, ids: Iterable[int]) -> bytes: ...


class Tokenizer:
    """Text <-> token ids for one vocabulary.

    Use :meth:`for_vocab` or :meth:`from_name` rather than the constructor.
    """

    def __init__(self, backend: _Backend, name: str):
        self._backend = backend
        self.name = name
        self.n_vocab: int = backend.n_vocab

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, n_vocab={self.n_vocab})"

    # -- construction -------------------------------------------------------

    @classmethod
    def for_vocab(cls, n_vocab: int) -> Tokenizer:
        """The built-in tokenizer for a model with ``n_vocab`` logits."""
        if n_vocab == _WORLD_N_VOCAB:
            return cls.from_name("world")
        if n_vocab in _NEOX_N_VOCABS:
            return cls.from_name("20b", n_vocab=n_vocab)
        if n_vocab == _BYTE_N_VOCAB:
            return cls.from_name("bytes")
        raise ValueError(
            f"no built-in tokenizer for n_vocab={n_vocab}; the choices are "
            f"'world' (n_vocab 65536), '20b' (n_vocab 50277 or 50304) and 'bytes' (n_vocab 256); "
            f"pick one, or a vocabulary file, with Tokenizer.from_name()"
        )

    @classmethod
    def from_name(cls, name: str | os.PathLike[str], n_vocab: int | None = None) -> Tokenizer:
        """A tokenizer by name (``"world"``, ``"20b"``, ``"bytes"``) or file path.

        A path ending in ``.json`` is read with ``tokenizers``; any other file
        is read as a World-style vocabulary (``id repr(token) length`` lines).
        ``n_vocab`` pads the id range up to the model's logit count.
        """
        key = _NAMES.get(str(name).lower()) if isinstance(name, str) else None
        if key is None:
            path = os.fspath(name)
            if not os.path.isfile(path):
                raise ValueError(
                    f"unknown tokenizer {name!r}: expected 'world', '20b', 'bytes' or the path of a vocabulary file"
                )
            return cls._from_file(path, n_vocab)

        cache_key = (key, n_vocab or _DEFAULT_N_VOCAB[key])
        with _cache_lock:
            tok = _cache.get(cache_key)
            if tok is None:
                tok = _cache[cache_key] = cls._builtin(*cache_key)
        return tok

    @classmethod
    def _builtin(cls, key: str, n_vocab: int) -> Tokenizer:
        if key == "world":
            from .world import WorldTokenizer

            return cls(WorldTokenizer(n_vocab=n_vocab), "world")
        if key == "20b":
            from .neox import NeoXTokenizer

            return cls(NeoXTokenizer(n_vocab=n_vocab), "20b")
        from .byte import ByteTokenizer

        if n_vocab != _BYTE_N_VOCAB:
            raise ValueError(f"the bytes tokenizer has n_vocab 256, not {n_vocab}")
        return cls(ByteTokenizer(), "bytes")

    @classmethod
    def _from_file(cls, path: str, n_vocab: int | None) -> Tokenizer:
        if path.lower().endswith(".json"):
            from .neox import NeoXTokenizer

            backend: _Backend = NeoXTokenizer(path, n_vocab=n_vocab)
        else:
            from .world import WorldTokenizer

            # A custom vocabulary's own size is not known before loading it.
            backend = WorldTokenizer(path, n_vocab=n_vocab or _WORLD_N_VOCAB)
        return cls(backend, os.path.basename(path))

    # -- use ----------------------------------------------------------------

    def encode(self, text: str | bytes | bytearray | memoryview) -> list[int]:
        """Token ids of ``text`` (str, or bytes for the byte-based tokenizers)."""
        return self._backend.encode(text)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The exact bytes of ``ids`` (may end inside a UTF-8 character)."""
        return self._backend.decode_bytes(ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 become U+FFFD."""
        # Join the bytes first: a character split across tokens must not turn
        # into replacement characters.
        return self._backend.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)


class StreamDecoder:
    """Decodes generated tokens one at a time without breaking characters.

    ``feed`` returns the text that is complete so far and holds back the
    trailing bytes of a character that later tokens will finish; ``flush``
    returns what is left at the end (U+FFFD for an unfinished character).
    Bytes that can never be valid UTF-8 come out as U+FFFD straight away.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        return self._utf8.decode(self._tokenizer.decode_bytes((token_id,)))

    def flush(self) -> str:
        """Text still held back, then start afresh."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text

    @property
    def pending(self) -> bytes:
        """Bytes held back, waiting for the rest of their character."""
        return self._utf8.getstate()[0]
