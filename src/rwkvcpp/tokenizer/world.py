"""The RWKV "World" tokenizer (vocabulary ``rwkv_vocab_v20230424``).

Tokens are byte strings; encoding is a greedy longest match over the UTF-8
bytes of the input.  Every single byte is a token (ids 1..256), so any byte
string, valid UTF-8 or not, can be encoded.  Id 0 is the end-of-text token and
is not in the vocabulary file; it decodes to nothing.
"""

from __future__ import annotations

import ast
import operator
import os
from collections.abc import Iterable, Sequence

VOCAB_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rwkv_vocab_v20230424.txt")

# Logit count of the World models: the vocabulary uses ids up to 65529 and the
# models pad the embedding to 65536.
WORLD_N_VOCAB = 65536

# Key lengths of the matching index (see WorldTokenizer.__init__); tokens are
# at most 128 bytes long.
_LEVEL_KEYS = (4, 8, 16, 32, 64)


def _parse_vocab_line(line: str, lineno: int, path: str) -> tuple[int, bytes]:
    # Line format: ``<id> <python str or bytes literal> <byte length>``.  The
    # literal may itself contain spaces, so split at the first and last space.
    try:
        first = line.index(" ")
        last = line.rindex(" ")
        token_id = int(line[:first])
        text = line[first + 1 : last]
        # Most lines are plain quoted text with no escapes; taking those
        # verbatim halves the loading time.  Anything else (escapes, bytes
        # literals, stray quotes) goes through the safe literal parser.
        quote = text[:1]
        if (
            quote in ("'", '"')
            and len(text) >= 2
            and text[-1] == quote
            and "\\" not in text
            and quote not in text[1:-1]
        ):
            literal = text[1:-1]
        else:
            literal = ast.literal_eval(text)
        length = int(line[last + 1 :])
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"{path}:{lineno}: malformed vocabulary line: {line!r}") from exc
    if isinstance(literal, str):
        token = literal.encode("utf-8")
    elif isinstance(literal, bytes):
        token = literal
    else:
        raise ValueError(f"{path}:{lineno}: token must be a str or bytes literal, got {type(literal).__name__}")
    if len(token) != length:
        raise ValueError(f"{path}:{lineno}: token is {len(token)} bytes but the line says {length}")
    return token_id, token


class WorldTokenizer:
    """Greedy longest-match byte tokenizer over a World vocabulary file."""

    name = "world"

    def __init__(self, vocab_file: str = VOCAB_FILE, n_vocab: int = WORLD_N_VOCAB):
        id_to_token: dict[int, bytes] = {}
        with open(vocab_file, "r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line:
                    continue
                token_id, token = _parse_vocab_line(line, lineno, vocab_file)
                id_to_token[token_id] = token

        max_id = max(id_to_token)
        if n_vocab <= max_id:
            raise ValueError(f"n_vocab={n_vocab} is too small for {vocab_file} (largest id {max_id})")
        self.n_vocab = n_vocab

        # Decoding table indexed by id; ids without a token (0 = end of text,
        # padding up to n_vocab) decode to b"".
        self._decode_table: list[bytes] = [b""] * n_vocab
        for token_id, token in id_to_token.items():
            self._decode_table[token_id] = token

        # If a byte string appeared twice the later id would win, which is
        # also what the reference implementation does.
        self._token_to_id: dict[bytes, int] = {tok: i for i, tok in sorted(id_to_token.items())}
        missing = [b for b in range(256) if bytes([b]) not in self._token_to_id]
        if missing:
            raise ValueError(f"{vocab_file}: no token for byte {missing[0]:#04x}; every byte must be encodable")
        self._byte_ids = [self._token_to_id[bytes([b])] for b in range(256)]

        # Index for the greedy longest match.  Level k maps the first k bytes
        # of every token of k+ bytes to the lengths, longest first, of the
        # tokens that start with them and are shorter than 2k (the last level
        # keeps all longer ones).  Walking down the levels finds how far the
        # input can match at all in a few dict lookups; only the lengths of
        # the deepest levels reached are then probed.  Without the levels, a
        # run of spaces would probe every one of the ~60 space-run tokens.
        self._levels: list[tuple[int, dict[bytes, tuple[int, ...]]]] = []
        for k in _LEVEL_KEYS:
            table: dict[bytes, set[int]] = {}
            for tok in self._token_to_id:
                if len(tok) >= k:
                    lengths = table.setdefault(tok[:k], set())
                    if len(tok) < 2 * k or k == _LEVEL_KEYS[-1]:
                        lengths.add(len(tok))
            self._levels.append((k, {key: tuple(sorted(ls, reverse=True)) for key, ls in table.items()}))

    # -- encoding -----------------------------------------------------------

    def encode(self, text: str | bytes | bytearray | memoryview) -> list[int]:
        """Token ids for ``text`` (a str is encoded as strict UTF-8 first)."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        get = self._token_to_id.get
        levels = self._levels
        byte_ids = self._byte_ids
        n = len(data)
        ids: list[int] = []
        append = ids.append
        i = 0
        while i < n:
            # Candidate lengths of 4+ bytes, from the deepest level reached.
            # Near the end of the input a slice is short and matches no key.
            reached = []
            for k, table in levels:
                lengths = table.get(data[i : i + k])
                if lengths is None:
                    break
                reached.append(lengths)
            match = 0
            for lengths in reversed(reached):
                for length in lengths:
                    if i + length <= n:
                        token_id = get(data[i : i + length])
                        if token_id is not None:
                            match = length
                            break
                if match:
                    break
            if not match:
                for length in (3, 2):
                    if i + length <= n:
                        token_id = get(data[i : i + length])
                        if token_id is not None:
                            match = length
                            break
            if match and token_id is not None:  # a match found an id; the test tells mypy so
                append(token_id)
                i += match
            else:
                append(byte_ids[data[i]])
                i += 1
        return ids

    # -- decoding -----------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = [operator.index(i) for i in ids]
        # Check the range explicitly: a negative index would silently wrap.
        if ids and (min(ids) < 0 or max(ids) >= self.n_vocab):
            bad = [i for i in ids if not 0 <= i < self.n_vocab]
            raise ValueError(f"token id(s) {bad[:5]} out of range 0..{self.n_vocab - 1}")
        return b"".join(map(self._decode_table.__getitem__, ids))

    def token_bytes(self, token_id: int) -> bytes:
        return self.decode_bytes((token_id,))

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
