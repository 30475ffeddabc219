"""Byte tokenizer for byte-level models: token id i is the byte value i."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence

BYTE_N_VOCAB = 256


class ByteTokenizer:
    name = "bytes"
    n_vocab = BYTE_N_VOCAB

    def encode(self, text: str | bytes | bytearray | memoryview) -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return list(data)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = [operator.index(i) for i in ids]
        try:
            return bytes(ids)
        except ValueError:
            bad = [i for i in ids if not 0 <= i < 256]
            raise ValueError(f"token id(s) {bad[:5]} out of range 0..255") from None

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
