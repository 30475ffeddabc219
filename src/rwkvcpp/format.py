"""Facts of the rwkv.cpp model file format (``.bin``) and a validating reader.

The authoritative description is docs/FORMAT.md; this module is its executable form (what each
RWKV version's tensors are is in :mod:`rwkvcpp.arch`, writing is :mod:`rwkvcpp.writer`).
Everything is pure Python plus numpy, so it works without the native engine.

Layout: a header of six little-endian int32 (magic, version, n_vocab, n_embed, n_layer,
data_type) followed by tensor records up to EOF. Each record is ``n_dims, name_len, type``, then
``n_dims`` sizes innermost first, then the UTF-8 name, then the data. Shapes in this module are
always given in PyTorch order, i.e. the file's sizes reversed.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import IO, Any, Iterator, NamedTuple, Sequence, Union

import numpy as np

from ._typing import Array, StrPath

#: What the readers map tensors from: a file name, or bytes in memory (an ``mmap.mmap``, bytes...).
PathOrBuffer = Union[StrPath, bytes, bytearray, memoryview, mmap.mmap]

MAGIC = 0x67676D66
VERSION = 101
#: Versions we can read. Version 100 differs from 101 only in the layout of quantized blocks,
#: which we refuse (see iter_records); its FP32/FP16 tensors are read as usual.
SUPPORTED_VERSIONS = (100, 101)

HEADER_FORMAT = "<6i"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)  # 24 bytes

#: Longest tensor name we accept. Real names are below 40 bytes; the limit only exists to turn a
#: corrupt length field into a clear error instead of a huge read.
MAX_NAME_BYTES = 1024
MAX_DIMS = 3


class TensorType(NamedTuple):
    id: int
    name: str
    block_len: int  # elements per block
    block_bytes: int  # bytes per block

    @property
    def quantized(self) -> bool:
        return self.block_len > 1


FP32 = 0
FP16 = 1
Q4_0 = 2
Q4_1 = 3
Q5_0 = 7
Q5_1 = 8
Q8_0 = 9
Q4_K = 13
Q5_K = 14

TYPES: dict[int, TensorType] = {
    t.id: t
    for t in (
        TensorType(FP32, "FP32", 1, 4),
        TensorType(FP16, "FP16", 1, 2),
        TensorType(Q4_0, "Q4_0", 32, 18),  # half d, 16 bytes of nibbles
        TensorType(Q4_1, "Q4_1", 32, 20),  # half d, half m, 16 bytes of nibbles
        TensorType(Q5_0, "Q5_0", 32, 22),  # half d, uint32 high bits, 16 bytes of nibbles
        TensorType(Q5_1, "Q5_1", 32, 24),  # half d, half m, uint32 high bits, 16 bytes
        TensorType(Q8_0, "Q8_0", 32, 34),  # half d, 32 int8
        # ggml's K formats: super-blocks of 8 sub-blocks of 32 with 6-bit scales and minimums
        TensorType(Q4_K, "Q4_K", 256, 144),  # half d, half dmin, 12 bytes of scales, 128 of nibbles
        TensorType(Q5_K, "Q5_K", 256, 176),  # the same plus 32 bytes of fifth bits before the nibbles
    )
}

#: Ids that old rwkv.cpp versions used for formats that no longer exist (Q4_1_O, Q4_2, Q4_3).
_RETIRED_TYPES = {4: "Q4_1_O", 5: "Q4_2", 6: "Q4_3"}
#: Ids of ggml formats that rwkv.cpp's file format names but that are not read here.
_UNSUPPORTED_TYPES = {10: "Q8_1", 11: "Q2_K", 12: "Q3_K", 15: "Q6_K", 16: "Q8_K"}

_TYPE_BY_NAME = {t.name: t.id for t in TYPES.values()}


def valid_type_names() -> list[str]:
    return [t.name for t in TYPES.values()]


def type_id(name: Union[str, int]) -> int:
    """The type id for a name such as ``"fp16"`` or ``"Q5_1"`` (case-insensitive).

    An int that is already a valid id is returned unchanged, so callers can accept either.
    """
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        if int(name) in TYPES:
            return int(name)
        raise ValueError(f"unknown tensor type id {int(name)}; valid ids: {_describe_types()}")
    if isinstance(name, str):
        key = name.strip().upper()
        if key in _TYPE_BY_NAME:
            return _TYPE_BY_NAME[key]
    raise ValueError(f"unknown tensor type {name!r}; valid names: {', '.join(valid_type_names())}")


def type_name(type_id_: int) -> str:
    return get_type(type_id_).name


def get_type(type_id_: int) -> TensorType:
    try:
        return TYPES[type_id_]
    except (KeyError, TypeError):
        raise ValueError(f"unknown tensor type id {type_id_!r}; valid ids: {_describe_types()}") from None


def _describe_types() -> str:
    return ", ".join(f"{t.id} ({t.name})" for t in TYPES.values())


def tensor_nbytes(type_id_: int, shape: Sequence[int]) -> int:
    """Bytes of data of a tensor of this type and PyTorch-order shape.

    Quantized blocks run along the innermost dimension (the last PyTorch dimension), which must
    therefore be a multiple of the block length.
    """
    t = get_type(type_id_)
    shape = tuple(int(s) for s in shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"invalid tensor shape {shape}: sizes must be positive and at least one")
    if shape[-1] % t.block_len:
        hint = ""
        if t.block_len > 32:
            hint = (" (rwkv.cpp's quantizer writes such tensors with super-blocks running across rows, which "
                    "no reader can use; quantize the FP16/FP32 model to a 32-value format)")
        raise ValueError(
            f"{t.name} needs the innermost size to be a multiple of {t.block_len}, got shape {shape}{hint}"
        )
    n_elements = 1
    for s in shape:
        n_elements *= s
    return n_elements // t.block_len * t.block_bytes


class Header(NamedTuple):
    version: int
    n_vocab: int
    n_embed: int
    n_layer: int
    data_type: int


class Record(NamedTuple):
    name: str
    type_id: int
    shape: tuple[int, ...]  # PyTorch order (the file's sizes reversed)
    offset: int  # file offset of the first data byte
    nbytes: int

    @property
    def type_name(self) -> str:
        return TYPES[self.type_id].name


def _read_exact(f: IO[bytes], n: int, path: StrPath, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{path}: file is truncated in {what} (wanted {n} bytes, got {len(data)})")
    return data


def _parse_header(raw: bytes, path: StrPath) -> Header:
    magic, version, n_vocab, n_embed, n_layer, data_type = struct.unpack(HEADER_FORMAT, raw)
    if magic != MAGIC:
        raise ValueError(
            f"{path}: not an rwkv.cpp model file (magic 0x{magic & 0xFFFFFFFF:08x}, expected 0x{MAGIC:08x})"
        )
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(
            f"{path}: unsupported file version {version} (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})"
        )
    for field, value in (("n_vocab", n_vocab), ("n_embed", n_embed), ("n_layer", n_layer)):
        if value <= 0:
            raise ValueError(f"{path}: header field {field} is {value}, must be positive")
    if data_type not in TYPES:
        raise ValueError(f"{path}: header data_type {_describe_bad_type(data_type)}")
    return Header(version, n_vocab, n_embed, n_layer, data_type)


def _describe_bad_type(tid: int) -> str:
    if tid in _RETIRED_TYPES:
        return f"{tid} is the retired format {_RETIRED_TYPES[tid]}; re-quantize from an FP16/FP32 file"
    if tid in _UNSUPPORTED_TYPES:
        return (f"{tid} is ggml's {_UNSUPPORTED_TYPES[tid]}, which is not supported "
                f"(supported: {_describe_types()}); re-quantize from an FP16/FP32 file")
    return f"{tid} is not a known tensor type (valid: {_describe_types()})"


def read_header(path: StrPath) -> Header:
    """Reads and validates the 24-byte header."""
    with open(path, "rb") as f:
        return _parse_header(_read_exact(f, HEADER_SIZE, path, "the header"), path)


def iter_records(path: StrPath) -> Iterator[Record]:
    """Yields every tensor record of a file, validating each; data is skipped, not read."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = _parse_header(_read_exact(f, HEADER_SIZE, path, "the header"), path)
        seen: set[str] = set()
        index = 0
        while f.tell() < file_size:
            where = f"record {index} at offset {f.tell()}"
            n_dims, name_len, tid = struct.unpack("<3i", _read_exact(f, 12, path, where))
            if not 1 <= n_dims <= MAX_DIMS:
                raise ValueError(f"{path}: {where} has n_dims {n_dims}, must be 1..{MAX_DIMS}")
            if not 1 <= name_len <= MAX_NAME_BYTES:
                raise ValueError(f"{path}: {where} has name length {name_len}, must be 1..{MAX_NAME_BYTES}")
            if tid not in TYPES:
                raise ValueError(f"{path}: {where} has type {_describe_bad_type(tid)}")
            sizes = struct.unpack(f"<{n_dims}i", _read_exact(f, 4 * n_dims, path, where))
            raw_name = _read_exact(f, name_len, path, where)
            try:
                name = raw_name.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}: {where} has a name that is not UTF-8: {raw_name!r}") from None
            where = f"tensor {name!r} ({where})"
            if any(s <= 0 for s in sizes):
                raise ValueError(f"{path}: {where} has non-positive sizes {list(sizes)}")
            if name in seen:
                raise ValueError(f"{path}: {where} repeats a tensor name")
            seen.add(name)
            if header.version == 100 and TYPES[tid].quantized:
                raise ValueError(
                    f"{path}: {where} is {TYPES[tid].name} in a version-100 file, whose quantized "
                    "blocks use an older layout; re-quantize it from an FP16/FP32 file"
                )
            shape = tuple(reversed(sizes))
            try:
                nbytes = tensor_nbytes(tid, shape)
            except ValueError as e:
                raise ValueError(f"{path}: {where}: {e}") from None
            offset = f.tell()
            if offset + nbytes > file_size:
                raise ValueError(
                    f"{path}: file is truncated in the data of {where}: needs {nbytes} bytes at "
                    f"offset {offset}, file has {file_size} bytes"
                )
            yield Record(name, tid, shape, offset, nbytes)
            f.seek(offset + nbytes)
            index += 1


def load_records(path: StrPath) -> list[Record]:
    """All records of a file, in file order."""
    return list(iter_records(path))


_NUMPY_DTYPES: dict[int, np.dtype[Any]] = {FP32: np.dtype("<f4"), FP16: np.dtype("<f2")}


def read_tensor(path_or_buffer: PathOrBuffer, record: Record) -> Array:
    """The stored data of a record as a read-only numpy view, without conversion.

    FP32 and FP16 records come back as float32 / float16 arrays of the record's shape; quantized
    records as a 1-D uint8 array of their raw blocks. ``path_or_buffer`` is a path (the file is
    memory-mapped) or anything supporting the buffer protocol (an ``mmap.mmap``, bytes, ...).
    """
    dtype = _NUMPY_DTYPES.get(record.type_id, np.dtype(np.uint8))
    count = record.nbytes // dtype.itemsize
    shape = record.shape if record.type_id in _NUMPY_DTYPES else (record.nbytes,)
    if isinstance(path_or_buffer, (str, os.PathLike)):
        size = os.path.getsize(path_or_buffer)
        if record.offset + record.nbytes > size:
            raise ValueError(f"{path_or_buffer}: tensor {record.name!r} lies beyond the end of the file")
        return np.memmap(path_or_buffer, dtype=dtype, mode="r", offset=record.offset, shape=shape)
    buffer = memoryview(path_or_buffer)
    if record.offset + record.nbytes > buffer.nbytes:
        raise ValueError(f"<buffer>: tensor {record.name!r} lies beyond the end of the buffer")
    array = np.frombuffer(buffer, dtype=dtype, count=count, offset=record.offset).reshape(shape)
    array.flags.writeable = False
    return array


def read_tensor_f32(path_or_buffer: PathOrBuffer, record: Record) -> Array:
    """An FP32 or FP16 record as float32 in PyTorch shape.

    FP32 data is a zero-copy view of the mapped file; FP16 data is widened (a copy).
    """
    if record.type_id not in _NUMPY_DTYPES:
        where = path_or_buffer if isinstance(path_or_buffer, (str, os.PathLike)) else "<buffer>"
        raise ValueError(
            f"{where}: tensor {record.name!r} is {record.type_name}; only FP32/FP16 tensors can be "
            "read as float32 here"
        )
    array = read_tensor(path_or_buffer, record)
    if record.type_id == FP32:
        return array
    return array.astype(np.float32)


def open_mmap(path: StrPath) -> mmap.mmap:
    """A read-only mmap of a whole file, for repeated read_tensor calls without reopening."""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
