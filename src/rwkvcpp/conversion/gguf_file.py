"""The GGUF container, llama.cpp's model file: reading (mapped, every field checked) and writing
(atomic, streamed), with no knowledge of any model. :mod:`rwkvcpp.conversion.gguf` maps RWKV onto it.

The layout (ggml's docs/gguf.md; little-endian throughout): the magic ``GGUF``, a uint32 version
(3; 2 is the same layout), uint64 tensor and metadata counts; the metadata, each a string key, a
uint32 value type and the value (strings are a uint64 length and UTF-8 bytes; an array is an
element type, a uint64 count and the elements); then per tensor its name, uint32 dimension count,
uint64 sizes innermost first, uint32 ggml type and uint64 data offset; then the data, starting
at the next multiple of ``general.alignment`` (32 by default), each tensor at an aligned offset
from there.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from typing import Any, BinaryIO, Callable, NamedTuple, NoReturn, Optional

import numpy as np

from .. import format as fmt
from .._typing import StrPath
from ..atomic_file import write_atomically

__all__ = ["GGUFError", "GGUFFile", "GGUFTensor", "GGMLType", "GGML_TYPES", "OutTensor", "is_gguf", "write_gguf"]

MAGIC = b"GGUF"
#: Version 1 (2023) used 32-bit counts; llama.cpp writes 3, whose layout 2 shares.
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS

ProgressFn = Callable[[int, int, str], None]


class GGUFError(ValueError):
    """A GGUF file that cannot be read or converted; the message names the file."""


def is_gguf(path: StrPath) -> bool:
    """Whether ``path`` is a file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except (IsADirectoryError, FileNotFoundError, PermissionError):
        return False


# --------------------------------------------------------------------------------------------
# The container: value and tensor types
# --------------------------------------------------------------------------------------------

# Metadata value types: id -> (name, struct format); 8 is a string, 9 an array.
UINT32, INT32, FLOAT32, STRING, ARRAY = 4, 5, 6, 8, 9
_SCALARS = {0: ("uint8", "<B"), 1: ("int8", "<b"), 2: ("uint16", "<H"), 3: ("int16", "<h"),
            4: ("uint32", "<I"), 5: ("int32", "<i"), 6: ("float32", "<f"), 7: ("bool", "<?"),
            10: ("uint64", "<Q"), 11: ("int64", "<q"), 12: ("float64", "<d")}


class GGMLType(NamedTuple):
    id: int
    name: str
    block_len: int
    block_bytes: int
    bin_id: Optional[int]  # the .bin type with the same blocks, if any


# ggml's tensor types (ggml.h's enum and block sizes). Ids 4, 5 (retired Q4_2, Q4_3) and 31-33,
# 36-38 (retired repacked layouts) are gone from GGUF files.
_K = 256
GGML_TYPES = {t.id: t for t in (
    GGMLType(0, "F32", 1, 4, fmt.FP32), GGMLType(1, "F16", 1, 2, fmt.FP16),
    GGMLType(2, "Q4_0", 32, 18, fmt.Q4_0), GGMLType(3, "Q4_1", 32, 20, fmt.Q4_1),
    GGMLType(6, "Q5_0", 32, 22, fmt.Q5_0), GGMLType(7, "Q5_1", 32, 24, fmt.Q5_1),
    GGMLType(8, "Q8_0", 32, 34, fmt.Q8_0), GGMLType(9, "Q8_1", 32, 36, None),
    # The K-quants; the .bin has Q4_K and Q5_K (rwkv.cpp's ids 13 and 14), the same super-blocks.
    GGMLType(10, "Q2_K", _K, 84, None), GGMLType(11, "Q3_K", _K, 110, None),
    GGMLType(12, "Q4_K", _K, 144, fmt.Q4_K), GGMLType(13, "Q5_K", _K, 176, fmt.Q5_K),
    GGMLType(14, "Q6_K", _K, 210, None), GGMLType(15, "Q8_K", _K, 292, None),
    GGMLType(16, "IQ2_XXS", _K, 66, None), GGMLType(17, "IQ2_XS", _K, 74, None),
    GGMLType(18, "IQ3_XXS", _K, 98, None), GGMLType(19, "IQ1_S", _K, 50, None),
    GGMLType(20, "IQ4_NL", 32, 18, None), GGMLType(21, "IQ3_S", _K, 110, None),
    GGMLType(22, "IQ2_S", _K, 82, None), GGMLType(23, "IQ4_XS", _K, 136, None),
    GGMLType(24, "I8", 1, 1, None), GGMLType(25, "I16", 1, 2, None), GGMLType(26, "I32", 1, 4, None),
    GGMLType(27, "I64", 1, 8, None), GGMLType(28, "F64", 1, 8, None), GGMLType(29, "IQ1_M", _K, 56, None),
    GGMLType(30, "BF16", 1, 2, None), GGMLType(34, "TQ1_0", _K, 54, None), GGMLType(35, "TQ2_0", _K, 66, None),
    GGMLType(39, "MXFP4", 32, 17, None),
)}
BF16 = 30


class GGUFTensor(NamedTuple):
    name: str
    type_id: int  # ggml type id
    shape: tuple[int, ...]  # PyTorch order: ggml's ne reversed
    offset: int  # absolute file offset of the data
    nbytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.type_id].name


def _nbytes(ggml: GGMLType, shape: tuple[int, ...]) -> int:
    count: int = math.prod(shape)
    return count // ggml.block_len * ggml.block_bytes


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class GGUFFile:
    """A GGUF file, mapped and validated: ``version``, ``metadata`` ({key: value}, arrays as
    lists or numpy arrays), ``tensors`` ({name: GGUFTensor} in file order), ``data(tensor)``.

    Everything is checked before anything is returned: magic, version, counts and lengths
    against the file's size, value and tensor types, dimensions, data offsets (aligned, inside
    the file, not overlapping). Raises GGUFError naming the file and what is wrong.
    """

    def __init__(self, path: StrPath):
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            if self.size < 24:
                raise GGUFError(f"{self.path}: {self.size} bytes, too short for a GGUF header")
            self._map: Optional[mmap.mmap] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._pos = 0
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # arrays over the data are still alive; the map goes with them
                pass
            self._map = None

    def data(self, tensor: GGUFTensor) -> memoryview:
        return memoryview(self._mapped())[tensor.offset:tensor.offset + tensor.nbytes]

    def _mapped(self) -> mmap.mmap:
        if self._map is None:
            raise GGUFError(f"{self.path}: the file is closed")
        return self._map

    # ---- parsing ----

    def fail(self, problem: str) -> NoReturn:
        raise GGUFError(f"{self.path}: {problem}")

    def _take(self, n: int, what: str) -> int:
        start = self._pos
        if n < 0 or start + n > self.size:
            self.fail(f"truncated in {what} (needs {n} bytes at offset {start}, the file has {self.size})")
        self._pos = start + n
        return start

    def _unpack(self, form: str, what: str) -> Any:  # a number of the form's one field
        return struct.unpack_from(form, self._mapped(), self._take(struct.calcsize(form), what))[0]

    def _string(self, what: str) -> str:
        n = self._unpack("<Q", what)
        raw = self._mapped()[self._take(n, what):self._pos]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not UTF-8: {raw[:40]!r}")

    def _value(self, vtype: int, what: str) -> Any:  # a GGUF value: number, string, or array of them
        if vtype in _SCALARS:
            return self._unpack(_SCALARS[vtype][1], what)
        if vtype == STRING:
            return self._string(what)
        if vtype == ARRAY:
            etype, count = self._unpack("<I", what), self._unpack("<Q", what)
            if etype in _SCALARS:
                dtype = np.dtype(_SCALARS[etype][1])
                start = self._take(count * dtype.itemsize, f"{what} ({count} values)")
                return np.frombuffer(self._mapped(), dtype, count, start).copy()
            if etype != STRING:
                self.fail(f"{what} is an array of value type {etype}; only arrays of numbers and strings are read")
            if count > (self.size - self._pos) // 8:  # every string takes at least its 8-byte length
                self.fail(f"{what} claims {count} strings, more than the file's size allows")
            return [self._string(f"{what}[{i}]") for i in range(count)]
        self.fail(f"{what} has unknown value type {vtype}")

    def _parse(self) -> None:
        self._pos = 0
        magic = bytes(self._mapped()[0:4])
        if magic != MAGIC:
            self.fail(f"not a GGUF file (magic {magic!r}, expected {MAGIC!r})")
        self._pos = 4
        self.version = self._unpack("<I", "the header")
        if self.version not in VERSIONS:
            if self.version in (0x02000000, 0x03000000):
                self.fail("a big-endian GGUF file; only little-endian files are read")
            self.fail(f"GGUF version {self.version}; versions {' and '.join(map(str, VERSIONS))} are read "
                       "(version 1 files predate August 2023: convert the model again)")
        n_tensors, n_kv = self._unpack("<Q", "the header"), self._unpack("<Q", "the header")
        # Each key/value takes at least 13 bytes, each tensor info at least 32.
        for count, what, least in ((n_kv, "metadata entries", 13), (n_tensors, "tensors", 32)):
            if count > self.size // least:
                self.fail(f"the header claims {count} {what}, more than a {self.size}-byte file can hold")

        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, int] = {}
        for i in range(n_kv):
            key = self._string(f"metadata key {i}")
            if key in self.metadata:
                self.fail(f"metadata key {key!r} appears twice")
            vtype = self._unpack("<I", f"metadata {key!r}")
            self.metadata[key] = self._value(vtype, f"metadata {key!r}")
            self.value_types[key] = vtype

        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            self.fail(f"general.alignment is {alignment!r}; it must be a power of two")
        self.alignment = alignment

        infos = []
        for i in range(n_tensors):
            name = self._string(f"the name of tensor {i}")
            where = f"tensor {name!r}"
            n_dims = self._unpack("<I", where)
            if not 1 <= n_dims <= MAX_DIMS:
                self.fail(f"{where} has {n_dims} dimensions; GGUF tensors have 1 to {MAX_DIMS}")
            ne = [self._unpack("<Q", where) for _ in range(n_dims)]
            type_id, offset = self._unpack("<I", where), self._unpack("<Q", where)
            infos.append((name, ne, type_id, offset))
        self.data_offset = -(-self._pos // alignment) * alignment

        self.tensors: dict[str, GGUFTensor] = {}
        for name, ne, type_id, offset in infos:
            self.tensors[name] = self._tensor(name, ne, type_id, offset)
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in self.tensors.values())
        for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
            if start < end:
                self.fail(f"the data of tensors {first!r} and {second!r} overlap")

    def _tensor(self, name: str, ne: list[int], type_id: int, offset: int) -> GGUFTensor:
        where = f"tensor {name!r}"
        if name in self.tensors:
            self.fail(f"{where} appears twice")
        ggml = GGML_TYPES.get(type_id)
        if ggml is None:
            self.fail(f"{where} has unknown ggml type {type_id}")
        if any(n < 1 for n in ne) or math.prod(ne) > self.size * ggml.block_len:
            self.fail(f"{where} has sizes {ne}, impossible for a {self.size}-byte file")
        if ne[0] % ggml.block_len:
            self.fail(f"{where} is {ggml.name} with rows of {ne[0]} values, not a multiple of its "
                       f"{ggml.block_len}-value blocks")
        if offset % self.alignment:
            self.fail(f"{where} has data offset {offset}, not a multiple of the alignment {self.alignment}")
        shape = tuple(reversed(ne))
        nbytes = _nbytes(ggml, shape)
        start = self.data_offset + offset
        if start + nbytes > self.size:
            self.fail(f"truncated in the data of {where} ({nbytes} bytes at offset {start}, "
                       f"the file has {self.size})")
        return GGUFTensor(name, type_id, shape, start, nbytes)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class OutTensor(NamedTuple):
    name: str
    type_id: int  # ggml type id
    shape: tuple[int, ...]  # PyTorch order
    data: Callable[[], Any]  # returns the tensor's bytes (any buffer), called when it is written


def _pack_value(vtype: int, value: Any) -> bytes:
    if vtype in _SCALARS:
        return struct.pack(_SCALARS[vtype][1], value)
    if vtype == STRING:
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        return struct.pack("<Q", len(raw)) + raw
    etype, items = value  # an array: (element type, values)
    return struct.pack("<IQ", etype, len(items)) + b"".join(_pack_value(etype, item) for item in items)


def write_gguf(path: StrPath, metadata: list[tuple[str, int, Any]], tensors: list[OutTensor],
               progress: Optional[ProgressFn] = None) -> None:
    """Writes a GGUF (version 3) file atomically: ``metadata`` as [(key, value type, value)] (an
    array's value is (element type, items)), then ``tensors`` ([OutTensor]), each aligned to 32
    bytes and streamed from its ``data()``."""
    head = [struct.pack("<4sIQQ", MAGIC, 3, len(tensors), len(metadata))]
    for key, vtype, value in metadata:
        head.append(_pack_value(STRING, key) + struct.pack("<I", vtype) + _pack_value(vtype, value))
    offset, sizes = 0, []
    for t in tensors:
        ne = tuple(reversed(t.shape))
        head.append(_pack_value(STRING, t.name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, t.type_id, offset))
        sizes.append(_nbytes(GGML_TYPES[t.type_id], t.shape))
        offset += -(-sizes[-1] // DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT

    def write(f: BinaryIO) -> None:
        f.write(b"".join(head))
        f.write(b"\0" * (-f.tell() % DEFAULT_ALIGNMENT))
        for i, (t, size) in enumerate(zip(tensors, sizes)):
            data = memoryview(t.data()).cast("B")
            if data.nbytes != size:  # a bug here, never the user's file
                raise AssertionError(f"{t.name}: {data.nbytes} bytes of data, {size} expected")
            f.write(data)
            f.write(b"\0" * (-size % DEFAULT_ALIGNMENT))
            if progress is not None:
                progress(i + 1, len(tensors), t.name)

    write_atomically(path, write)
