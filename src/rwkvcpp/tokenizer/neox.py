"""The GPT-NeoX-20B tokenizer used by the RWKV-4 Pile and Raven models.

Encoding is delegated to the Hugging Face ``tokenizers`` package (an optional
dependency, imported only when this tokenizer is created).  Decoding to raw
bytes is done here from the vocabulary, because ``tokenizers`` can only return
``str`` and a single token may hold part of a UTF-8 character, which streaming
output must be able to hold back.
"""

from __future__ import annotations

import json
import operator
import os
from types import ModuleType
from typing import TYPE_CHECKING
from collections.abc import Iterable, Sequence

if TYPE_CHECKING:
    from tokenizers import Tokenizer

TOKENIZER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "20B_tokenizer.json")

# Token count of the file (50254 BPE tokens + 23 added tokens); the models pad
# their logits to 50277 or to 50304.
NEOX_N_VOCAB = 50277


def _import_tokenizers() -> ModuleType:
    try:
        import tokenizers
    except ImportError as exc:
        raise ImportError(
            "the 20B (GPT-NeoX) tokenizer needs the 'tokenizers' package; install it with: pip install tokenizers"
        ) from exc
    return tokenizers


def _byte_level_alphabet() -> dict[str, int]:
    """Inverse of the byte-level BPE alphabet: printable character -> byte.

    Byte-level BPE vocabularies spell each byte as one printable character:
    bytes that are already visible Latin-1 characters stand for themselves and
    the rest (controls, space, soft hyphen, ...) are moved, in byte order, to
    code points 256, 257, ...
    """
    visible = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    alphabet: dict[str, int] = {}
    shifted = 0
    for b in range(256):
        if b in visible:
            alphabet[chr(b)] = b
        else:
            alphabet[chr(256 + shifted)] = b
            shifted += 1
    return alphabet


class NeoXTokenizer:
    """A ``tokenizers`` JSON tokenizer; by default the shipped 20B one."""

    name = "20b"

    def __init__(self, tokenizer_file: str = TOKENIZER_FILE, n_vocab: int | None = None):
        tokenizers = _import_tokenizers()
        if not os.path.isfile(tokenizer_file):
            raise FileNotFoundError(f"tokenizer file not found: {tokenizer_file}")
        self._tk: Tokenizer = tokenizers.Tokenizer.from_file(tokenizer_file)

        with open(tokenizer_file, "r", encoding="utf-8") as f:
            spec = json.load(f)
        decoder = spec.get("decoder") or {}
        special_ids = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}

        vocab = self._tk.get_vocab(with_added_tokens=True)
        size = max(vocab.values()) + 1
        if n_vocab is None:
            n_vocab = size
        if n_vocab < size:
            raise ValueError(f"n_vocab={n_vocab} is too small for {tokenizer_file} ({size} tokens)")
        self.n_vocab = n_vocab
        self._size = size

        # Raw bytes of every id.  Special tokens (end of text, padding) decode
        # to nothing, as in ``tokenizers``' own decode().  Added tokens are
        # stored as plain text; regular tokens are spelled in the byte-level
        # alphabet when the decoder says so.
        self._byte_level = decoder.get("type") == "ByteLevel"
        added = {t["id"] for t in spec.get("added_tokens", [])}
        alphabet = _byte_level_alphabet()
        table = [b""] * n_vocab
        for token, token_id in vocab.items():
            if token_id in special_ids:
                continue
            if self._byte_level and token_id not in added and all(c in alphabet for c in token):
                table[token_id] = bytes(alphabet[c] for c in token)
            else:
                table[token_id] = token.encode("utf-8")
        self._decode_table = table

    def encode(self, text: str | bytes | bytearray | memoryview) -> list[int]:
        if isinstance(text, (bytes, bytearray, memoryview)):
            # tokenizers only takes str; invalid bytes become U+FFFD here.
            text = bytes(text).decode("utf-8", errors="replace")
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = [operator.index(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) >= self.n_vocab):
            bad = [i for i in ids if not 0 <= i < self.n_vocab]
            raise ValueError(f"token id(s) {bad[:5]} out of range 0..{self.n_vocab - 1}")
        if not self._byte_level:
            # Without a byte-level alphabet only whole strings can be decoded.
            return self._tk.decode([i for i in ids if i < self._size]).encode("utf-8")
        return b"".join(map(self._decode_table.__getitem__, ids))

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
