"""JSON from files we did not write (safetensors headers, sharded-checkpoint indexes, config.json).

``json`` parses nested objects and arrays by recursion, so a header of 100,000 nested objects ends
in RecursionError, or, where a program has raised the recursion limit, in a crash of the C stack.
The nesting depth is therefore measured first, in linear time and without recursion, and
anything deeper than the caller allows is refused before ``json`` sees it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .._typing import StrPath

__all__ = ["loads", "load_file", "nesting_depth"]

_KEPT = b'"[]{}'
_NOT_KEPT = bytes(b for b in range(256) if b not in _KEPT)
_CHUNK = 1 << 20  # bytes counted at a time, to keep memory flat on hostile input


def nesting_depth(data: bytes, stop_above: int | None = None) -> int:
    """How deep objects and arrays nest in the UTF-8 JSON text ``data`` (0 for a scalar),
    brackets inside strings aside; never less than the depth json's parser reaches before it
    stops, valid JSON or not. With ``stop_above``, counting may stop once the depth is past it.

    Bytes of multi-byte UTF-8 characters are never ASCII, so the bytes can be scanned. Escapes
    go first, so that an escaped quote cannot end a string: pairs of backslashes, taken from the
    left as json does, then backslash-quote (outside strings a backslash is not JSON, and json
    stops there, so what the scan makes of the rest does not matter). Then everything but quotes
    and brackets, then adjacent quotes (strings without brackets: dropping two quotes changes no
    other quote's parity). What is left is counted with numpy."""
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    codes = np.frombuffer(unescaped.translate(None, _NOT_KEPT).replace(b'""', b""), np.uint8)
    depth = deepest = 0
    quotes_before = 0
    for start in range(0, len(codes), _CHUNK):
        chunk = codes[start:start + _CHUNK]
        quotes = quotes_before + np.cumsum(chunk == ord('"'))
        outside = quotes % 2 == 0  # a closing quote is "outside", but it is no bracket
        opens = ((chunk == ord("[")) | (chunk == ord("{"))) & outside
        closes = ((chunk == ord("]")) | (chunk == ord("}"))) & outside
        levels = depth + np.cumsum(opens.astype(np.int64) - closes)
        deepest = max(deepest, int(levels.max()))
        depth, quotes_before = int(levels[-1]), int(quotes[-1])
        # json stops at a closing bracket with nothing open; past the limit the answer is known
        if int(levels.min()) < 0 or (stop_above is not None and deepest > stop_above):
            break
    return deepest


def loads(text: str | bytes, max_depth: int) -> Any:
    """``json.loads`` for untrusted text (str, or UTF-8 bytes): ValueError for nesting deeper
    than ``max_depth``, as for any other invalid JSON."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    text = data.decode("utf-8")  # UnicodeError is a ValueError too
    depth = nesting_depth(data, stop_above=max_depth)
    if depth > max_depth:
        raise ValueError(f"JSON nested at least {depth} levels deep; at most {max_depth} are accepted")
    return json.loads(text)


def load_file(path: StrPath, max_bytes: int, max_depth: int) -> Any:
    """A JSON file's value, refusing files over ``max_bytes`` (ValueError) before reading them."""
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"over {max_bytes} bytes, more than a JSON file of this kind holds")
    return loads(data, max_depth)
