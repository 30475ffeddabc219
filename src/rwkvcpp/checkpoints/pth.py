"""Read PyTorch checkpoints (``torch.save`` files) without torch and without running their code.

A ``torch.save`` file is a pickle plus raw tensor bytes. Unpickling with the standard ``pickle``
module lets the file call any Python function it names, so a downloaded ``.pth`` could run
arbitrary code. This reader uses an unpickler that only resolves the handful of names a tensor
checkpoint is made of (``collections.OrderedDict``, torch's tensor rebuild functions, typed storage
classes, dtype objects) and maps each of them to a harmless stand-in defined here. Anything else
is refused with :class:`UnsafeCheckpointError` before it can be called.

Tensors are not read while the pickle is: each becomes a :class:`LazyTensor` that remembers where
its bytes lie in the file and reads just those (through a short-lived mmap) when asked, widening
bf16/fp16 to float32. Converting a 7B checkpoint therefore needs the memory of one tensor, not of
the model.

Two container formats are read:

* the zip format (torch >= 1.6): ``<archive>/data.pkl`` plus one stored (uncompressed) member
  ``<archive>/data/<key>`` per storage, optionally ``<archive>/byteorder``;
* the legacy format (torch < 1.6, or ``_use_new_zipfile_serialization=False``): a row of pickles
  (magic number, protocol version, system info, the object, the storage keys), then for each
  storage key an int64 element count followed by the raw elements.

This module also holds the types shared by every reader: :class:`LazyTensor`,
:class:`LazyCheckpoint` and the error classes.
"""

from __future__ import annotations

import collections
import io
import math
import mmap
import os
import pickle
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "LazyTensor",
    "LazyCheckpoint",
    "read_torch_zip",
    "read_torch_legacy",
    "DTYPE_NAMES",
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
_RAW_DTYPES = {
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
DTYPE_NAMES = frozenset(_RAW_DTYPES)
# Contiguous tensors are converted this many source bytes at a time (see LazyTensor.numpy).
_CHUNK_BYTES = 16 << 20


# --------------------------------------------------------------------------------------------
# Where a tensor's bytes are
# --------------------------------------------------------------------------------------------


class _Storage:
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

    def bind(self, path: str, offset: int, nbytes: int, *, member=None, big_endian=False):
        self.path, self.offset, self.nbytes = path, offset, nbytes
        self.member, self.big_endian = member, big_endian
        return self

    def __setstate__(self, state):  # a pickle BUILD opcode aimed at one of our objects
        raise UnsafeCheckpointError("refusing to load: the pickle tries to modify a storage")

    def with_bytes(self, start: int, length: int, fn: Callable):
        """Call ``fn(buffer, offset)`` with bytes [start, start+length) of this storage available
        at ``buffer[offset:]``; the buffer is only valid during the call (``fn`` must copy)."""
        if self.path is None:
            raise CheckpointError(f"storage {self.key!r} has no data in the file")
        if start < 0 or length < 0 or start + length > self.nbytes:
            raise CheckpointError(f"read outside storage {self.key!r}")
        if self.member is not None:
            # Compressed member (a re-zipped checkpoint; torch itself never compresses): it cannot
            # be mapped, so decompress up to the bytes we need.
            with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
                f.seek(start)
                data = f.read(length)
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

    def __init__(self, storage: _Storage, storage_offset: int, shape, strides=None):
        self._storage = storage
        self.dtype: str = storage.dtype
        self.shape: tuple[int, ...] = tuple(shape)
        self.strides: tuple[int, ...] = (
            tuple(strides) if strides is not None else _contiguous_strides(self.shape)
        )
        self.storage_offset: int = storage_offset

    def __setstate__(self, state):  # see _Storage.__setstate__
        raise UnsafeCheckpointError("refusing to load: the pickle tries to modify a tensor")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the data in the file (not of the float32 result)."""
        return self.numel * _RAW_DTYPES[self.dtype].itemsize

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
        if self.numel == 0:
            return None
        if self._storage.path is None:
            return f"has no data in the file (storage {self._storage.key!r} is missing)"
        itemsize = _RAW_DTYPES[self.dtype].itemsize
        end = (self.storage_offset + self._span()) * itemsize
        if end > self._storage.nbytes:
            return (f"reaches byte {end} of a storage of {self._storage.nbytes} bytes "
                    f"(shape {self.shape}, strides {self.strides}, offset {self.storage_offset})")
        return None

    def numpy(self) -> np.ndarray:
        """Read this tensor's bytes and return a new C-contiguous array: float32 for every float
        dtype (bf16 and fp16 are widened exactly), the file's own type for integer/bool data."""
        raw = _RAW_DTYPES[self.dtype]
        if self._storage.big_endian:
            raw = raw.newbyteorder(">")
        out = np.empty(self.shape, _output_dtype(self.dtype))
        if self.numel == 0:
            return out
        span = self._span()
        itemsize = raw.itemsize
        contiguous = self.strides == _contiguous_strides(self.shape)

        def convert(buffer, offset):
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
                if release and done > released:
                    buffer.madvise(mmap.MADV_DONTNEED, released, done - released)
                    released = done
            return out

        return self._storage.with_bytes(self.storage_offset * itemsize, span * itemsize, convert)

    def __array__(self, dtype=None, copy=None):
        array = self.numpy()
        return array if dtype is None else array.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"LazyTensor(shape={self.shape}, dtype={self.dtype})"


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(tuple(shape)):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _output_dtype(dtype: str) -> np.dtype:
    return np.dtype(np.float32) if dtype in _FLOAT_DTYPES else _RAW_DTYPES[dtype].newbyteorder("=")


def _convert_into(out: np.ndarray, view: np.ndarray, dtype: str) -> None:
    """Copy a (possibly strided, possibly big-endian) view of raw elements into ``out``."""
    if dtype == "bfloat16":
        # bf16 is the top half of a float32: widen the bits in place in the result's own
        # memory, shift them up, and the float32 result is there without a temporary.
        bits = out.view(np.uint32)
        np.copyto(bits, view)
        np.left_shift(bits, 16, out=bits)
    else:
        np.copyto(out, view, casting="same_kind")  # float64 -> float32 is "same_kind"


class LazyCheckpoint(Mapping):
    """An ordered, read-only ``Mapping[str, np.ndarray]`` over a checkpoint's tensors.

    ``checkpoint[name]`` reads that one tensor from the file and returns it as float32 (integer
    tensors keep their type), so iterating over ``.items()`` holds one tensor at a time. Use
    :meth:`shape_of`, :meth:`dtype_of` and :meth:`tensor` to look at tensors without reading them;
    ``name in checkpoint``, ``len`` and iteration never read data either. Nothing is cached:
    reading a name twice reads the file twice.
    """

    def __init__(self, tensors: Mapping[str, LazyTensor] | Iterable[tuple[str, LazyTensor]],
                 source: str = ""):
        self._tensors: dict[str, LazyTensor] = dict(tensors)
        self.source = source  # the file or directory this came from, for messages

    def __getitem__(self, name: str) -> np.ndarray:
        return self._tensors[name].numpy()

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, name) -> bool:  # Mapping's default would read the tensor
        return name in self._tensors

    def tensor(self, name: str) -> LazyTensor:
        return self._tensors[name]

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self._tensors[name].shape

    def dtype_of(self, name: str) -> str:
        """The dtype of the data in the file ("bfloat16", "float16", "float32", ...)."""
        return self._tensors[name].dtype

    def lazy_items(self) -> Iterator[tuple[str, LazyTensor]]:
        return iter(self._tensors.items())

    def renamed(self, new_names: Mapping[str, str]) -> LazyCheckpoint:
        """A checkpoint over the same lazy tensors with names mapped through ``new_names`` (names
        not in it are kept), order preserved. Two tensors landing on one name is an error."""
        out: dict[str, LazyTensor] = {}
        for old, tensor in self._tensors.items():
            new = new_names.get(old, old)
            if new in out:
                raise CheckpointError(f"{self.source}: two tensors would both be named {new!r}")
            out[new] = tensor
        return LazyCheckpoint(out, self.source)

    def __repr__(self) -> str:
        return f"<LazyCheckpoint {self.source!r}: {len(self)} tensors>"


# --------------------------------------------------------------------------------------------
# The restricted unpickler
# --------------------------------------------------------------------------------------------


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: only carries the element type. Not
    callable, so a pickle cannot use it as a function."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: str):
        self.dtype = dtype

    def __repr__(self):
        return f"<storage type {self.dtype}>"


class TorchDType(str):
    """Stand-in for a ``torch.dtype`` object found in a pickle (e.g. in saved config values)."""


# torch.<name> storage classes -> dtype names
_STORAGE_CLASSES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
# torch.<name> dtype objects -> dtype names (with torch's aliases)
_TORCH_DTYPES = {
    "float64": "float64", "double": "float64",
    "float32": "float32", "float": "float32",
    "float16": "float16", "half": "float16",
    "bfloat16": "bfloat16",
    "int64": "int64", "long": "int64",
    "int32": "int32", "int": "int32",
    "int16": "int16", "short": "int16",
    "int8": "int8", "uint8": "uint8", "bool": "bool",
}


def _check_ints(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise CheckpointError(f"tensor {what} is not a tuple of integers: {value!r}")
    return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """Replaces torch._utils._rebuild_tensor(_v2): (storage, offset, size, stride,
    requires_grad, backward_hooks[, metadata]) -> LazyTensor. The extra arguments only matter to
    autograd and are ignored."""
    if not isinstance(storage, _Storage):
        raise CheckpointError("tensor rebuilt from something that is not a storage")
    if not isinstance(storage_offset, int):
        raise CheckpointError(f"tensor storage offset is not an integer: {storage_offset!r}")
    return LazyTensor(storage, storage_offset, _check_ints(size, "size"), _check_ints(stride, "stride"))


def _rebuild_parameter(data, *_ignored):
    """Replaces torch._utils._rebuild_parameter(_with_state): an nn.Parameter is its tensor."""
    if not isinstance(data, LazyTensor):
        raise CheckpointError("parameter rebuilt from something that is not a tensor")
    return data


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only what a tensor checkpoint is made of.

    ``find_class`` is the single point through which a pickle obtains anything callable
    (GLOBAL, STACK_GLOBAL and the copyreg EXT opcodes all go through it), so answering it from
    an allowlist of harmless stand-ins means REDUCE/NEWOBJ/BUILD can only ever reach
    OrderedDict and the functions above.
    """

    def __init__(self, file, filename: str, storages: dict | None):
        super().__init__(file, encoding="utf-8")
        self._filename = filename
        # key -> _Storage, shared by all tensors viewing the same storage; None where the pickle
        # must not reference storages at all (the legacy format's small header pickles).
        self._storages = storages
        self.views: list[tuple[_Storage, str, int]] = []  # legacy storage views, bound later

    def find_class(self, module: str, name: str):
        found = _SAFE_GLOBALS.get((module, name))
        if found is not None:
            return found
        if module == "torch" and name in _STORAGE_CLASSES:
            return _StorageType(_STORAGE_CLASSES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return TorchDType(_TORCH_DTYPES[name])
        dotted = f"{module}.{name}"
        if module == "torch" or module.startswith("torch."):
            # Probably harmless but not understood here (e.g. _rebuild_tensor_v3 for float8,
            # sparse or quantized tensors): still refused, since it is not on the allowlist.
            why = "which this reader does not support (it reads dense float and integer tensors)"
        else:
            why = "which a weights checkpoint never needs"
        raise UnsafeCheckpointError(
            f"{self._filename}: refusing to load: the pickle references {dotted}, {why}",
            forbidden=dotted,
        )

    def persistent_load(self, pid):
        # zip format: ('storage', storage_type, key, location, numel)
        # legacy:     ('storage', storage_type, root_key, location, numel, view_metadata)
        if self._storages is None or not isinstance(pid, tuple) or len(pid) not in (5, 6) \
                or pid[0] != "storage":
            raise CheckpointError(f"{self._filename}: unexpected persistent id in pickle: {pid!r:.200}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) \
                or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"{self._filename}: malformed storage reference: {pid!r:.200}")
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(key, storage_type.dtype, numel)
        elif storage.dtype != storage_type.dtype:
            raise CheckpointError(f"{self._filename}: storage {key} is used with two element types")
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return storage
        # Legacy storage views (never written by torch >= 1.0): (view_key, offset, numel),
        # in elements of the root storage.
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                and isinstance(view[1], int) and isinstance(view[2], int)
                and view[1] >= 0 and view[2] >= 0):
            raise CheckpointError(f"{self._filename}: malformed storage view: {view!r:.200}")
        view_storage = self._storages.get("view:" + view[0])
        if view_storage is None:
            view_storage = self._storages["view:" + view[0]] = _Storage(view[0], storage.dtype, view[2])
            self.views.append((view_storage, key, view[1]))
        return view_storage


def _unpickle(data_or_file, filename: str, storages: dict | None, unpickler_out: list | None = None):
    """Run the restricted unpickler; turn every failure that is not ours into CheckpointError."""
    file = io.BytesIO(data_or_file) if isinstance(data_or_file, (bytes, bytearray)) else data_or_file
    unpickler = _RestrictedUnpickler(file, filename, storages)
    if unpickler_out is not None:
        unpickler_out.append(unpickler)
    try:
        return unpickler.load()
    except UnsafeCheckpointError as exc:
        if str(exc).startswith(f"{filename}:"):
            raise
        raise UnsafeCheckpointError(f"{filename}: {exc}", exc.forbidden) from None
    except CheckpointError as exc:  # raised by the stand-ins, which do not know the file name
        if str(exc).startswith(f"{filename}:"):
            raise
        raise CheckpointError(f"{filename}: {exc}") from None
    except Exception as exc:  # any malformed pickle: EOFError, UnpicklingError, TypeError, ...
        raise CheckpointError(f"{filename}: corrupt or truncated pickle ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------------------------
# From the unpickled object to a LazyCheckpoint
# --------------------------------------------------------------------------------------------

# Training frameworks wrap the state dict (Lightning: "state_dict", DeepSpeed: "module", ...).
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict", "params")


def _collect_tensors(obj, filename: str) -> dict[str, LazyTensor]:
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, LazyTensor)}
        if tensors:
            bad = [k for k in tensors if not isinstance(k, str)]
            if bad:
                raise CheckpointError(f"{filename}: tensor names must be strings, found {bad[0]!r}")
            return tensors
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and any(isinstance(v, LazyTensor) for v in inner.values()):
                return _collect_tensors(inner, filename)
        raise CheckpointError(f"{filename}: the checkpoint holds no tensors")
    raise CheckpointError(f"{filename}: the pickle holds a {type(obj).__name__}, not a dict of tensors")


def _finish(tensors: dict[str, LazyTensor], path: str) -> LazyCheckpoint:
    name = os.path.basename(path)
    for tensor_name, tensor in tensors.items():
        problem = tensor.check_bounds()
        if problem:
            raise CheckpointError(f"{name}: tensor {tensor_name!r} {problem}")
    return LazyCheckpoint(tensors, source=str(path))


# --------------------------------------------------------------------------------------------
# The zip format
# --------------------------------------------------------------------------------------------

_LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"
_LOCAL_HEADER_SIZE = 30


def _member_data_offset(f, info: zipfile.ZipInfo, filename: str) -> int:
    """Offset of a member's data in the file, from its local file header. The local header's
    name and extra lengths can differ from the central directory's (torch pads the extra field
    to align storages to 64 bytes), so they must be read here."""
    f.seek(info.header_offset)
    header = f.read(_LOCAL_HEADER_SIZE)
    if len(header) != _LOCAL_HEADER_SIZE or header[:4] != _LOCAL_HEADER_SIGNATURE:
        raise CheckpointError(f"{filename}: corrupt zip: bad local header for {info.filename}")
    name_len = int.from_bytes(header[26:28], "little")
    extra_len = int.from_bytes(header[28:30], "little")
    return info.header_offset + _LOCAL_HEADER_SIZE + name_len + extra_len


def read_torch_zip(path) -> LazyCheckpoint:
    """Read a zip-format ``torch.save`` file (``.pth``, ``.pt``, HF ``pytorch_model.bin``)."""
    path = os.fspath(path)
    filename = os.path.basename(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{filename}: truncated or corrupt zip archive ({exc})") from exc
    with zf:
        infos = {info.filename: info for info in zf.infolist()}
        # torch writes every record under one top-level folder named after the file.
        pickles = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
        # TorchScript archives have a data.pkl too, whose pickle names the model's classes.
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in infos):
            raise CheckpointError(f"{filename}: a TorchScript archive (torch.jit.save), not a "
                                  "checkpoint of tensors; save model.state_dict() instead")
        if len(pickles) != 1:
            raise CheckpointError(f"{filename}: a zip archive, but not a torch checkpoint "
                                  f"({'no' if not pickles else 'several'} data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]

        big_endian = False
        if prefix + "byteorder" in infos:
            order = zf.read(prefix + "byteorder").strip()
            if order not in (b"little", b"big"):
                raise CheckpointError(f"{filename}: unknown byteorder record {order!r}")
            big_endian = order == b"big"

        try:
            pickle_bytes = zf.read(pickles[0])
        except (zipfile.BadZipFile, OSError, EOFError) as exc:  # e.g. CRC mismatch
            raise CheckpointError(f"{filename}: corrupt zip member {pickles[0]} ({exc})") from exc
        storages: dict[str, _Storage] = {}
        obj = _unpickle(pickle_bytes, filename, storages)
        tensors = _collect_tensors(obj, filename)

        file_size = os.path.getsize(path)
        with open(path, "rb") as f:
            for key, storage in storages.items():
                member = f"{prefix}data/{key}"
                info = infos.get(member)
                if info is None:
                    raise CheckpointError(f"{filename}: storage {member} is missing from the archive")
                declared = storage.numel * _RAW_DTYPES[storage.dtype].itemsize
                if info.file_size < declared:
                    raise CheckpointError(f"{filename}: storage {member} holds {info.file_size} "
                                          f"bytes, {declared} expected")
                if info.compress_type == zipfile.ZIP_STORED:
                    offset = _member_data_offset(f, info, filename)
                    if offset + info.file_size > file_size:
                        raise CheckpointError(f"{filename}: truncated: {member} ends past the end of the file")
                    storage.bind(path, offset, info.file_size, big_endian=big_endian)
                else:
                    storage.bind(path, 0, info.file_size, member=member, big_endian=big_endian)
    return _finish(tensors, path)


# --------------------------------------------------------------------------------------------
# The legacy format
# --------------------------------------------------------------------------------------------

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def read_torch_legacy(path) -> LazyCheckpoint:
    """Read a legacy (pre-zip) ``torch.save`` file."""
    path = os.fspath(path)
    filename = os.path.basename(path)
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        # The small header pickles may not reference storages (storages=None) nor any global.
        magic = _unpickle(f, filename, None)
        if magic != _LEGACY_MAGIC:
            raise CheckpointError(f"{filename}: a Python pickle, but not a torch checkpoint "
                                  "(no torch magic number)")
        protocol = _unpickle(f, filename, None)
        if protocol != _LEGACY_PROTOCOL:
            raise CheckpointError(f"{filename}: legacy torch serialization protocol {protocol!r} "
                                  "is not supported; re-save it with a recent torch")
        sys_info = _unpickle(f, filename, None)
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise CheckpointError(f"{filename}: big-endian legacy torch checkpoints are not "
                                  "supported; re-save it with a recent torch")
        storages: dict[str, _Storage] = {}
        unpicklers: list = []
        obj = _unpickle(f, filename, storages, unpicklers)
        keys = _unpickle(f, filename, None)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CheckpointError(f"{filename}: corrupt storage key list")
        tensors = _collect_tensors(obj, filename)

        # The pickle module leaves the file right after each pickle's STOP opcode (torch relies
        # on this too), so the raw storages start here: per key, int64 element count + data.
        position = f.tell()
        for key in keys:
            storage = storages.get(key)
            if storage is None:
                raise CheckpointError(f"{filename}: storage {key} is stored but never used; "
                                      "its element type is unknown")
            f.seek(position)
            count = f.read(8)
            if len(count) != 8:
                raise CheckpointError(f"{filename}: truncated: storage {key} is missing")
            numel = int.from_bytes(count, "little", signed=True)
            nbytes = numel * _RAW_DTYPES[storage.dtype].itemsize
            if numel < 0 or position + 8 + nbytes > file_size:
                raise CheckpointError(f"{filename}: truncated: storage {key} ends past the end of the file")
            storage.bind(path, position + 8, nbytes)
            position += 8 + nbytes
        for view, root_key, offset in unpicklers[0].views:
            root = storages.get(root_key)
            itemsize = _RAW_DTYPES[view.dtype].itemsize
            if root is None or root.path is None or (offset + view.numel) * itemsize > root.nbytes:
                raise CheckpointError(f"{filename}: storage view {view.key} lies outside its storage")
            view.bind(path, root.offset + offset * itemsize, view.numel * itemsize)
    return _finish(tensors, path)
