"""Read ``.safetensors`` files from their JSON header, without the safetensors library (numpy
has no bf16, and this way safetensors is not a dependency)."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from .._typing import StrPath

from . import untrusted_json
from .lazy import INT64_LIMIT, MAX_DIMS, RAW_DTYPES, CheckpointError, LazyCheckpoint, LazyTensor, Storage
from .schema import model_order

if TYPE_CHECKING:
    from typing_extensions import TypeIs

__all__ = ["read_safetensors"]


_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}
# The safetensors library refuses headers over 100 MB; a larger one is corrupt or hostile.
_MAX_SAFETENSORS_HEADER = 100_000_000
# The header is flat: {name: {dtype, shape: [sizes], data_offsets}, __metadata__: {str: str}},
# three levels; a little slack for writers that nest metadata.
_MAX_HEADER_DEPTH = 8


def _is_int_list(value: object, max_len: int) -> TypeIs[list[int]]:
    """A list of at most ``max_len`` ints, each in [0, 2**63) as the format's sizes and offsets are."""
    return isinstance(value, list) and len(value) <= max_len and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < INT64_LIMIT for v in value)


def read_safetensors(path: StrPath) -> LazyCheckpoint:
    """Read a ``.safetensors`` file: 8-byte little-endian header length, a JSON header mapping
    names to dtype, shape and [begin, end) data offsets, then the data. Tensors come in model order
    (:func:`rwkvcpp.conversion.schema.model_order`), since the file keeps none: safetensors
    writers sort names alphabetically, which puts blocks.10 before blocks.2."""
    path = os.fspath(path)
    filename = os.path.basename(path)
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        length_bytes = f.read(8)
        if len(length_bytes) != 8:
            raise CheckpointError(f"{filename}: truncated safetensors file")
        header_len = int.from_bytes(length_bytes, "little")
        if header_len > _MAX_SAFETENSORS_HEADER or 8 + header_len > file_size:
            raise CheckpointError(f"{filename}: corrupt or truncated safetensors header "
                                  f"(claims {header_len} bytes)")
        header_bytes = f.read(header_len)
    try:
        header = untrusted_json.loads(header_bytes, _MAX_HEADER_DEPTH)
    except ValueError as exc:  # UnicodeDecodeError included
        raise CheckpointError(f"{filename}: corrupt safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{filename}: corrupt safetensors header (not a JSON object)")

    data_start = 8 + header_len
    data_size = file_size - data_start
    tensors: dict[str, LazyTensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise CheckpointError(f"{filename}: malformed header entry for {name!r}")
        dtype = _SAFETENSORS_DTYPES.get(str(info.get("dtype")))
        if dtype is None:
            raise CheckpointError(f"{filename}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not (_is_int_list(shape, MAX_DIMS) and _is_int_list(offsets, 2) and len(offsets) == 2
                and offsets[0] <= offsets[1]):
            raise CheckpointError(f"{filename}: malformed header entry for {name!r}")
        begin, end = offsets
        if end > data_size:
            raise CheckpointError(f"{filename}: truncated: tensor {name!r} ends past the end of the file")
        if end - begin != math.prod(shape) * RAW_DTYPES[dtype].itemsize:
            raise CheckpointError(f"{filename}: tensor {name!r}: {end - begin} bytes for shape {shape}")
        storage = Storage(name, dtype, math.prod(shape)).bind(path, data_start + begin, end - begin)
        tensors[name] = LazyTensor(storage, 0, shape)
        problem = tensors[name].check_bounds()
        if problem:
            raise CheckpointError(f"{filename}: tensor {name!r} {problem}")
    return LazyCheckpoint(((n, tensors[n]) for n in model_order(tensors)), source=path)
