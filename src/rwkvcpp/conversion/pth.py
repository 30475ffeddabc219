"""Read PyTorch checkpoints (``torch.save`` files) without torch and without running their code.

A ``torch.save`` file is a pickle plus raw tensor bytes. Unpickling with the standard ``pickle``
module lets the file call any Python function it names, so a downloaded ``.pth`` could run
arbitrary code. This reader uses an unpickler that only resolves the handful of names a tensor
checkpoint is made of (``collections.OrderedDict``, torch's tensor rebuild functions, typed storage
classes, dtype objects) and maps each of them to a harmless stand-in defined here. Anything else
is refused with :class:`~rwkvcpp.conversion.lazy.UnsafeCheckpointError` before it can be called.
Every stand-in a pickle receives is a fresh object that refuses BUILD, so a pickle can neither
reach nor change anything of the running process; the only objects it may modify are the dicts
it creates itself (torch sets a state dict's ``_metadata`` that way).

A pickle is at most :data:`MAX_PICKLE_BYTES` long, and a compressed zip member is checked against
that and against a plausible compression ratio before it is inflated.

Tensors are not read while the pickle is: each becomes a
:class:`~rwkvcpp.conversion.lazy.LazyTensor` that reads its bytes when asked.

Two container formats are read:

* the zip format (torch >= 1.6): ``<archive>/data.pkl`` plus one stored (uncompressed) member
  ``<archive>/data/<key>`` per storage, optionally ``<archive>/byteorder``;
* the legacy format (torch < 1.6, or ``_use_new_zipfile_serialization=False``): a row of pickles
  (magic number, protocol version, system info, the object, the storage keys), then for each
  storage key an int64 element count followed by the raw elements.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import IO, Any, Callable, NoReturn, Optional, Protocol, Union

from .._typing import StrPath

from .lazy import (INT64_LIMIT, MAX_DIMS, RAW_DTYPES, CheckpointError, LazyCheckpoint, LazyTensor, Storage,
                   UnsafeCheckpointError)

__all__ = ["read_torch_zip", "read_torch_legacy", "MAX_PICKLE_BYTES"]


class _Readable(Protocol):
    """What the unpickler reads from."""

    def read(self, n: int, /) -> bytes: ...

    def readline(self) -> bytes: ...

#: The longest pickle read. A state dict's pickle takes about 150 bytes per tensor (a 7B model's
#: is under 1 MB); unpickled objects can take some 40 times their bytes, so this bounds the
#: memory a hostile pickle can claim to a few GB at worst.
MAX_PICKLE_BYTES = 64 << 20
# How many times a compressed pickle of over a MiB may inflate: pickles compress a few times,
# deflate's ceiling (about 1000) is reached by runs of one byte, as in a zip bomb.
_MAX_PICKLE_RATIO = 100
_RATIO_CHECKED_ABOVE = 1 << 20
_MAX_BYTEORDER_BYTES = 16  # "little" or "big"


# --------------------------------------------------------------------------------------------
# The restricted unpickler
# --------------------------------------------------------------------------------------------


def _refuse_build(name: str) -> NoReturn:
    raise UnsafeCheckpointError(f"refusing to load: the pickle tries to modify {name}", forbidden=name)


class StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: only carries the element type. Not
    callable, so a pickle cannot use it as a function."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str):
        self.name = name
        self.dtype = dtype

    def __setstate__(self, state: object) -> None:  # BUILD: the dtype must stay the one the name says
        _refuse_build(f"torch.{self.name}")

    def __repr__(self) -> str:
        return f"<storage type {self.dtype}>"


class TorchDType(str):
    """Stand-in for a ``torch.dtype`` object found in a pickle (e.g. in saved config values)."""

    def __setstate__(self, state: object) -> None:
        _refuse_build(f"torch.{self}")


class _Reconstructor:
    """What a pickle receives for an allowed callable: a fresh wrapper per request, never the
    function or class itself, since BUILD on it would set attributes (``__defaults__``, ...) on
    the reader's own objects in the running process."""

    __slots__ = ("_name", "_function")

    def __init__(self, name: str, function: Callable[..., Any]):
        self._name = name
        self._function = function

    def __call__(self, *args: Any) -> Any:
        return self._function(*args)

    def __setstate__(self, state: object) -> None:
        _refuse_build(self._name)

    def __repr__(self) -> str:
        return f"<{self._name} (restricted)>"


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


def _is_int64(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -INT64_LIMIT <= value < INT64_LIMIT


def _check_ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(_is_int64(v) for v in value):
        raise CheckpointError(f"tensor {what} is not a tuple of int64 values: {value!r:.200}")
    if len(value) > MAX_DIMS:
        raise CheckpointError(f"tensor {what} has {len(value)} dimensions; at most {MAX_DIMS} are read")
    return tuple(value)


def _rebuild_tensor(storage: object, storage_offset: int, size: object, stride: object,
                    *_ignored: object) -> LazyTensor:
    """Replaces torch._utils._rebuild_tensor(_v2): (storage, offset, size, stride,
    requires_grad, backward_hooks[, metadata]) -> LazyTensor. The extra arguments only matter to
    autograd and are ignored."""
    if not isinstance(storage, Storage):
        raise CheckpointError("tensor rebuilt from something that is not a storage")
    if not _is_int64(storage_offset):
        raise CheckpointError(f"tensor storage offset is not an int64 value: {storage_offset!r:.200}")
    return LazyTensor(storage, storage_offset, _check_ints(size, "size"), _check_ints(stride, "stride"))


def _rebuild_parameter(data: object, *_ignored: object) -> LazyTensor:
    """Replaces torch._utils._rebuild_parameter(_with_state): an nn.Parameter is its tensor."""
    if not isinstance(data, LazyTensor):
        raise CheckpointError("parameter rebuilt from something that is not a tensor")
    return data


_SAFE_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
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

    def __init__(self, file: _Readable, filename: str, storages: dict[str, Storage] | None):
        super().__init__(file, encoding="utf-8")
        self._filename = filename
        # key -> Storage, shared by all tensors viewing the same storage; None where the pickle
        # must not reference storages at all (the legacy format's small header pickles).
        self._storages = storages
        self.views: list[tuple[Storage, str, int]] = []  # legacy storage views, bound later

    def find_class(self, module: str, name: str) -> Union[_Reconstructor, StorageType, TorchDType]:
        found = _SAFE_GLOBALS.get((module, name))
        if found is not None:
            return _Reconstructor(f"{module}.{name}", found)
        if module == "torch" and name in _STORAGE_CLASSES:
            return StorageType(name, _STORAGE_CLASSES[name])
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

    def persistent_load(self, pid: object) -> Storage:
        # zip format: ('storage', storage_type, key, location, numel)
        # legacy:     ('storage', storage_type, root_key, location, numel, view_metadata)
        if self._storages is None or not isinstance(pid, tuple) or len(pid) not in (5, 6) \
                or pid[0] != "storage":
            raise CheckpointError(f"{self._filename}: unexpected persistent id in pickle: {pid!r:.200}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, StorageType) or not isinstance(key, str) \
                or not _is_int64(numel) or numel < 0:
            raise CheckpointError(f"{self._filename}: malformed storage reference: {pid!r:.200}")
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = Storage(key, storage_type.dtype, numel)
        elif storage.dtype != storage_type.dtype:
            raise CheckpointError(f"{self._filename}: storage {key} is used with two element types")
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return storage
        # Legacy storage views (never written by torch >= 1.0): (view_key, offset, numel),
        # in elements of the root storage.
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                and _is_int64(view[1]) and _is_int64(view[2]) and view[1] >= 0 and view[2] >= 0):
            raise CheckpointError(f"{self._filename}: malformed storage view: {view!r:.200}")
        view_storage = self._storages.get("view:" + view[0])
        if view_storage is None:
            view_storage = self._storages["view:" + view[0]] = Storage(view[0], storage.dtype, view[2])
            self.views.append((view_storage, key, view[1]))
        return view_storage


class _BoundedReader:
    """A file as the unpickler reads it, refusing to read more than ``limit`` bytes from where it
    starts (the legacy format's pickles are read straight from the file, with no length given)."""

    def __init__(self, file: io.BufferedReader, limit: int):
        self._file = file
        self._limit = limit
        self._end = file.tell() + limit

    def _left(self, wanted: int) -> int:
        left = self._end - self._file.tell()
        if wanted > left:
            raise CheckpointError(f"the pickle is longer than {self._limit} bytes, more than a checkpoint's "
                                  "pickle takes")
        return wanted

    def read(self, n: int) -> bytes:
        return self._file.read(self._left(n))

    def readinto(self, buffer: Union[bytearray, memoryview]) -> int:
        return self._file.readinto(memoryview(buffer)[: self._left(len(buffer))])

    def readline(self) -> bytes:
        line = self._file.readline(self._end - self._file.tell() + 1)
        self._left(0)
        return line

    def peek(self, n: int = 0) -> bytes:  # looking ahead is not reading; the unpickler reads what it uses
        return self._file.peek(n)


def _unpickle(data_or_file: Union[bytes, bytearray, io.BufferedReader], filename: str,
              storages: dict[str, Storage] | None,
              unpickler_out: Optional[list[_RestrictedUnpickler]] = None) -> Any:  # whatever the pickle holds
    """Run the restricted unpickler; turn every failure that is not ours into CheckpointError."""
    file: _Readable
    if isinstance(data_or_file, (bytes, bytearray)):
        file = io.BytesIO(data_or_file)
    else:
        file = _BoundedReader(data_or_file, MAX_PICKLE_BYTES)
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


def _collect_tensors(obj: object, filename: str) -> dict[str, LazyTensor]:
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


def _member_data_offset(f: IO[bytes], info: zipfile.ZipInfo, filename: str) -> int:
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


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, what: str, filename: str) -> bytes:
    """A small member's bytes, after checking what it inflates to: the sizes in the zip's
    directory bound what zipfile will produce, so they are checked before anything is inflated."""
    member, size = info.filename, info.file_size
    if size > limit:
        described = f"{limit} ({limit >> 20} MiB)" if limit >= 1 << 20 else str(limit)
        raise CheckpointError(f"{filename}: {member} inflates to {size} bytes, more than the {described} "
                              f"allowed for {what}")
    if info.compress_type != zipfile.ZIP_STORED and size > _RATIO_CHECKED_ABOVE \
            and size > _MAX_PICKLE_RATIO * info.compress_size:
        raise CheckpointError(f"{filename}: {member} inflates {size // max(info.compress_size, 1)} times "
                              f"({info.compress_size} to {size} bytes), more than the {_MAX_PICKLE_RATIO} times "
                              f"{what} compresses; refused as a zip bomb")
    try:
        return zf.read(member)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:  # CRC mismatch, unknown method
        raise CheckpointError(f"{filename}: corrupt zip member {member} ({exc})") from exc


def read_torch_zip(path: StrPath) -> LazyCheckpoint:
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
            order = _read_member(zf, infos[prefix + "byteorder"], _MAX_BYTEORDER_BYTES, "a byteorder record",
                                 filename).strip()
            if order not in (b"little", b"big"):
                raise CheckpointError(f"{filename}: unknown byteorder record {order!r}")
            big_endian = order == b"big"

        pickle_bytes = _read_member(zf, infos[pickles[0]], MAX_PICKLE_BYTES, "a checkpoint's pickle", filename)
        storages: dict[str, Storage] = {}
        obj = _unpickle(pickle_bytes, filename, storages)
        tensors = _collect_tensors(obj, filename)

        file_size = os.path.getsize(path)
        with open(path, "rb") as f:
            for key, storage in storages.items():
                member = f"{prefix}data/{key}"
                info = infos.get(member)
                if info is None:
                    raise CheckpointError(f"{filename}: storage {member} is missing from the archive")
                declared = storage.numel * RAW_DTYPES[storage.dtype].itemsize
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


def read_torch_legacy(path: StrPath) -> LazyCheckpoint:
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
        storages: dict[str, Storage] = {}
        unpicklers: list[_RestrictedUnpickler] = []
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
            nbytes = numel * RAW_DTYPES[storage.dtype].itemsize
            if numel < 0 or position + 8 + nbytes > file_size:
                raise CheckpointError(f"{filename}: truncated: storage {key} ends past the end of the file")
            storage.bind(path, position + 8, nbytes)
            position += 8 + nbytes
        for view, root_key, offset in unpicklers[0].views:
            root = storages.get(root_key)
            itemsize = RAW_DTYPES[view.dtype].itemsize
            if root is None or root.path is None or (offset + view.numel) * itemsize > root.nbytes:
                raise CheckpointError(f"{filename}: storage view {view.key} lies outside its storage")
            view.bind(path, root.offset + offset * itemsize, view.numel * itemsize)
    return _finish(tensors, path)
