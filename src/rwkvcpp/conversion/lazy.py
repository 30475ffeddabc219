"""What every checkpoint reader returns: lazy tensors over the file's bytes, and the errors.

A :class:`LazyTensor` remembers where its bytes lie in the file (a :class:`Storage`) and reads
just those, through a short-lived mmap, when asked, widening bf16/fp16 to float32. A
:class:`LazyCheckpoint` is an ordered mapping of them. Converting a 7B checkpoint therefore needs
the memory of one tensor, not of the model.
"""

from __future__ import annotations

import math
import mmap
import os
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Optional, Protocol, TypeVar, Union

import numpy as np

from .._typing import Array

_T = TypeVar("_T")
#: What a storage's bytes are read from: a mapping of the file, or a decompressed zip member.
_Bytes = Union[bytes, mmap.mmap]

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "Storage",
    "LazyTensor",
    "TensorSource",
    "LazyCheckpoint",
    "DTYPE_NAMES",
    "RAW_DTYPES",
    "MAX_DIMS",
    "INT64_LIMIT",
]


class CheckpointError(ValueError):
    """The file is not a checkpoint this package can read: unknown format, truncated, corrupt."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint's pickle names something a plain tensor checkpoint never needs.

    ``forbidden`` holds the dotted name that was refused (e.g. ``"os.system"``).
    """

    def __init__(self, message: str, forbidden: str = ""):
        super().__init__(message)
        self.forbidden = forbidden


# Raw element types, by the dtype names this package uses (torch's names without "torch.").
# numpy has no bfloat16, so bf16 elements are read as their uint16 bit patterns and widened by
# hand in _convert_into().
RAW_DTYPES: dict[str, np.dtype[Any]] = {
    "float64": np.dtype("<f8"),
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "int16": np.dtype("<i2"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
}
_FLOAT_DTYPES = frozenset({"float64", "float32", "float16", "bfloat16"})
DTYPE_NAMES = frozenset(RAW_DTYPES)
#: numpy's limit on dimensions. Sizes, strides and offsets are int64 in torch and in safetensors:
#: readers refuse larger numbers as they arrive (Python's ints are unbounded, and arithmetic on
#: multi-megabyte ones from a hostile file would not end).
MAX_DIMS = 64
INT64_LIMIT = 2**63
# Contiguous tensors are converted this many source bytes at a time (see LazyTensor.numpy).
_CHUNK_BYTES = 16 << 20


# --------------------------------------------------------------------------------------------
# Where a tensor's bytes are
# --------------------------------------------------------------------------------------------


class Storage:
    """A run of raw bytes in a file that one or more tensors view (a torch storage, a safetensors
    slice). Created unbound while a pickle is read, bound to a file position afterwards, because
    the legacy format only says where storages lie after the pickle has been read."""

    __slots__ = ("key", "dtype", "numel", "path", "offset", "nbytes", "member", "big_endian")

    def __init__(self, key: str, dtype: str, numel: int):
        self.key = key
        self.dtype = dtype
        self.numel = numel  # as declared by the file; bounds are checked against nbytes
        self.path: str | None = None
        self.offset = 0  # absolute file offset of the first byte
        self.nbytes = 0
        self.member: str | None = None  # set when the bytes sit in a *compressed* zip member
        self.big_endian = False

    def bind(self, path: str, offset: int, nbytes: int, *, member: Optional[str] = None,
             big_endian: bool = False) -> Storage:
        self.path, self.offset, self.nbytes = path, offset, nbytes
        self.member, self.big_endian = member, big_endian
        return self

    def __setstate__(self, state: object) -> None:  # a pickle BUILD opcode aimed at one of our objects
        raise UnsafeCheckpointError("refusing to load: the pickle tries to modify a storage")

    def with_bytes(self, start: int, length: int, fn: Callable[[_Bytes, int], _T]) -> _T:
        """Call ``fn(buffer, offset)`` with bytes [start, start+length) of this storage available
        at ``buffer[offset:]``; the buffer is only valid during the call (``fn`` must copy)."""
        if self.path is None:
            raise CheckpointError(f"storage {self.key!r} has no data in the file")
        if start < 0 or length < 0 or start + length > self.nbytes:
            raise CheckpointError(f"read outside storage {self.key!r}")
        if self.member is not None:
            # Compressed member (a re-zipped checkpoint; torch itself never compresses): it cannot
            # be mapped, so decompress up to the bytes we need.
            try:
                with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
                    f.seek(start)
                    data = f.read(length)
            except (zipfile.BadZipFile, NotImplementedError, EOFError, zlib.error) as exc:  # method, CRC...
                name = os.path.basename(self.path)
                raise CheckpointError(f"{name}: corrupt zip member {self.member} ({exc})") from exc
            if len(data) != length:
                raise CheckpointError(f"{os.path.basename(self.path)}: truncated member {self.member}")
            return fn(data, 0)
        # Map just this range: mmap offsets must be multiples of the allocation granularity.
        # Mapping per read (instead of once per file) means pages are unmapped as soon as the
        # tensor has been converted, so resident memory stays at one tensor.
        absolute = self.offset + start
        aligned = absolute - absolute % mmap.ALLOCATIONGRANULARITY
        try:
            with open(self.path, "rb") as f:
                mm = mmap.mmap(f.fileno(), absolute + length - aligned, offset=aligned,
                               access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:  # ValueError: the file shrank since it was opened
            raise CheckpointError(f"{os.path.basename(self.path)}: cannot read tensor data ({exc})") from exc
        try:
            return fn(mm, absolute - aligned)
        finally:
            try:
                mm.close()
            except BufferError:  # a view survived in a traceback; the GC will unmap it later
                pass


# --------------------------------------------------------------------------------------------
# Lazy tensors and checkpoints
# --------------------------------------------------------------------------------------------


class LazyTensor:
    """A tensor whose data stays in the file until :meth:`numpy` is called.

    ``shape`` and ``strides`` are in elements (like torch's), ``dtype`` is a name from
    :data:`DTYPE_NAMES` describing the data *in the file* (``"bfloat16"``, ...).
    """

    __slots__ = ("shape", "dtype", "strides", "storage_offset", "_storage")

    def __init__(self, storage: Storage, storage_offset: int, shape: Iterable[int],
                 strides: Optional[Iterable[int]] = None):
        self._storage = storage
        self.dtype: str = storage.dtype
        self.shape: tuple[int, ...] = tuple(shape)
        self.strides: tuple[int, ...] = (
            tuple(strides) if strides is not None else _contiguous_strides(self.shape)
        )
        self.storage_offset: int = storage_offset

    def __setstate__(self, state: object) -> None:  # see Storage.__setstate__
        raise UnsafeCheckpointError("refusing to load: the pickle tries to modify a tensor")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        count: int = math.prod(self.shape)
        return count

    @property
    def nbytes(self) -> int:
        """Bytes of the data in the file (not of the float32 result)."""
        return self.numel * RAW_DTYPES[self.dtype].itemsize

    def _span(self) -> int:
        """Elements of storage covered, from storage_offset to the last element reached."""
        return 1 + sum((n - 1) * s for n, s in zip(self.shape, self.strides))

    def check_bounds(self) -> str | None:
        """Why this tensor cannot be read safely, or None. Readers call this once all storages
        are bound: the strides come from the file, and numpy's as_strided trusts them blindly."""
        if len(self.shape) != len(self.strides):
            return f"shape {self.shape} and strides {self.strides} differ in length"
        if any(n < 0 for n in self.shape) or any(s < 0 for s in self.strides) or self.storage_offset < 0:
            return f"negative size, stride or offset (shape {self.shape}, strides {self.strides})"
        if len(self.shape) > MAX_DIMS or math.prod(n for n in self.shape if n) * 8 >= INT64_LIMIT:
            return f"has a shape no array can have ({len(self.shape)} dimensions, sizes {self.shape[:8]})"
        if self.numel == 0:
            return None
        if self._storage.path is None:
            return f"has no data in the file (storage {self._storage.key!r} is missing)"
        itemsize = RAW_DTYPES[self.dtype].itemsize
        end = (self.storage_offset + self._span()) * itemsize
        if end > self._storage.nbytes:
            return (f"reaches byte {end} of a storage of {self._storage.nbytes} bytes "
                    f"(shape {self.shape}, strides {self.strides}, offset {self.storage_offset})")
        return None

    def numpy(self) -> Array:
        """Read this tensor's bytes and return a new C-contiguous array: float32 for every float
        dtype (bf16 and fp16 are widened exactly), the file's own type for integer/bool data."""
        raw = RAW_DTYPES[self.dtype]
        if self._storage.big_endian:
            raw = raw.newbyteorder(">")
        out = np.empty(self.shape, _output_dtype(self.dtype))
        if self.numel == 0:
            return out
        span = self._span()
        itemsize = raw.itemsize
        contiguous = self.strides == _contiguous_strides(self.shape)

        def convert(buffer: _Bytes, offset: int) -> Array:
            flat = np.frombuffer(buffer, dtype=raw, count=span, offset=offset)
            if not contiguous:  # e.g. a transposed tensor: let numpy walk the strides
                view = np.lib.stride_tricks.as_strided(
                    flat, shape=self.shape, strides=[s * itemsize for s in self.strides],
                    writeable=False)
                _convert_into(out, view, self.dtype)
                return out
            # Contiguous (the usual case): convert in chunks and hand each chunk's source pages
            # back as we go, so resident memory peaks at the result plus one chunk instead of
            # the result plus the whole source tensor.
            out_flat = out.reshape(-1)
            release = isinstance(buffer, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED")
            released = 0  # the mapping starts on a page boundary
            step = max(1, _CHUNK_BYTES // itemsize)
            for start in range(0, span, step):
                stop = min(start + step, span)
                _convert_into(out_flat[start:stop], flat[start:stop], self.dtype)
                done = (offset + stop * itemsize) // mmap.PAGESIZE * mmap.PAGESIZE
                if release and isinstance(buffer, mmap.mmap) and done > released:
                    buffer.madvise(mmap.MADV_DONTNEED, released, done - released)
                    released = done
            return out

        return self._storage.with_bytes(self.storage_offset * itemsize, span * itemsize, convert)

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> Array:
        array = self.numpy()
        return array if dtype is None else array.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"LazyTensor(shape={self.shape}, dtype={self.dtype})"


def _contiguous_strides(shape: Iterable[int]) -> tuple[int, ...]:
    strides: list[int] = []
    step = 1
    for n in reversed(tuple(shape)):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _output_dtype(dtype: str) -> np.dtype[Any]:
    return np.dtype(np.float32) if dtype in _FLOAT_DTYPES else RAW_DTYPES[dtype].newbyteorder("=")


def _convert_into(out: Array, view: Array, dtype: str) -> None:
    """Copy a (possibly strided, possibly big-endian) view of raw elements into ``out``."""
    if dtype == "bfloat16":
        # bf16 is the top half of a float32: widen the bits in place in the result's own
        # memory, shift them up, and the float32 result is there without a temporary.
        bits = out.view(np.uint32)
        np.copyto(bits, view)
        np.left_shift(bits, 16, out=bits)
    else:
        np.copyto(out, view, casting="same_kind")  # float64 -> float32 is "same_kind"


class TensorSource(Protocol):
    """What a :class:`LazyCheckpoint` holds: a :class:`LazyTensor`, or anything else that knows
    its shape and file dtype before reading (fla's re-laid-out tensors)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> str: ...

    def numpy(self) -> Array: ...


class LazyCheckpoint(Mapping[str, Array]):
    """An ordered, read-only ``Mapping[str, np.ndarray]`` over a checkpoint's tensors.

    ``checkpoint[name]`` reads that one tensor from the file and returns it as float32 (integer
    tensors keep their type), so iterating over ``.items()`` holds one tensor at a time. Use
    :meth:`shape_of`, :meth:`dtype_of` and :meth:`tensor` to look at tensors without reading them;
    ``name in checkpoint``, ``len`` and iteration never read data either. Nothing is cached:
    reading a name twice reads the file twice.
    """

    def __init__(self, tensors: Mapping[str, TensorSource] | Iterable[tuple[str, TensorSource]],
                 source: str = ""):
        self._tensors: dict[str, TensorSource] = dict(tensors)
        self.source = source  # the file or directory this came from, for messages

    def __getitem__(self, name: str) -> Array:
        return self._tensors[name].numpy()

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, name: object) -> bool:  # Mapping's default would read the tensor
        return name in self._tensors

    def tensor(self, name: str) -> TensorSource:
        return self._tensors[name]

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self._tensors[name].shape

    def dtype_of(self, name: str) -> str:
        """The dtype of the data in the file ("bfloat16", "float16", "float32", ...)."""
        return self._tensors[name].dtype

    def lazy_items(self) -> Iterator[tuple[str, TensorSource]]:
        return iter(self._tensors.items())

    def renamed(self, new_names: Mapping[str, str]) -> LazyCheckpoint:
        """A checkpoint over the same lazy tensors with names mapped through ``new_names`` (names
        not in it are kept), order preserved. Two tensors landing on one name is an error."""
        out: dict[str, TensorSource] = {}
        for old, tensor in self._tensors.items():
            new = new_names.get(old, old)
            if new in out:
                raise CheckpointError(f"{self.source}: two tensors would both be named {new!r}")
            out[new] = tensor
        return LazyCheckpoint(out, self.source)

    def __repr__(self) -> str:
        return f"<LazyCheckpoint {self.source!r}: {len(self)} tensors>"
