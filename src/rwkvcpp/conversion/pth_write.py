"""Write ``torch.save``-compatible ``.pth`` files and ``.safetensors`` files without torch.

Used to save state files (:mod:`rwkvcpp.conversion.state_file`) where torch is not installed; the
tests build their checkpoints with the same pickle emitter (tests/support/pth_writer.py).

A ``torch.save`` file (zip format, torch >= 1.6) is a zip archive with every record under one
top-level folder: ``data.pkl`` (the pickled object, whose tensors refer to storages by key through
persistent ids), ``data/<key>`` (each storage's raw little-endian elements, stored uncompressed),
``byteorder`` and ``version``. The pickle is emitted opcode by opcode (protocol 2, as torch
writes it) because the ``pickle`` module can only name globals that exist in the writing process,
and torch's do not here. A pickle is described as a tree of plain values (None, bool, int, str,
tuple, list, dict) and the node types :class:`Global` (a GLOBAL opcode), :class:`Call`
(callable, args, REDUCE), :class:`PersId` (a persistent id, BINPERSID) and :class:`Build`.

What is written only uses the names :mod:`rwkvcpp.conversion.pth`'s restricted reader accepts and
``torch.load(weights_only=True)`` allows, so both read the files back.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable, Union

import numpy as np

from .._typing import Array, StrPath
from ..atomic_file import write_atomically

__all__ = [
    "Global",
    "Call",
    "PersId",
    "Build",
    "dumps",
    "write_zip",
    "save_pth",
    "save_safetensors",
]


# --------------------------------------------------------------------------------------------
# Pickle emission
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Global:
    module: str
    name: str


@dataclass(frozen=True)
class Call:
    func: object  # usually a Global
    args: tuple[object, ...] = ()


@dataclass(frozen=True)
class PersId:
    pid: tuple[object, ...]


@dataclass(frozen=True)
class Build:
    """obj, state, BUILD: what pickle emits to restore an object's attributes."""

    obj: object
    state: object


def dumps(tree: object) -> bytes:
    """Protocol-2 pickle bytes for a tree of plain values and Global/Call/PersId/Build nodes."""
    out = bytearray(pickle.PROTO + bytes([2]))
    _emit(tree, out)
    out += pickle.STOP
    return bytes(out)


def _emit(obj: object, out: bytearray) -> None:
    if isinstance(obj, Global):
        out += pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode()
    elif isinstance(obj, Call):
        _emit(obj.func, out)
        _emit(tuple(obj.args), out)
        out += pickle.REDUCE
    elif isinstance(obj, PersId):
        _emit(tuple(obj.pid), out)
        out += pickle.BINPERSID
    elif isinstance(obj, Build):
        _emit(obj.obj, out)
        _emit(obj.state, out)
        out += pickle.BUILD
    elif obj is None:
        out += pickle.NONE
    elif obj is True:
        out += pickle.NEWTRUE
    elif obj is False:
        out += pickle.NEWFALSE
    elif isinstance(obj, int):
        if -(2**31) <= obj < 2**31:
            out += pickle.BININT + struct.pack("<i", obj)
        else:
            raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
            out += pickle.LONG1 + bytes([len(raw)]) + raw
    elif isinstance(obj, str):
        raw = obj.encode("utf-8")
        out += pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw
    elif isinstance(obj, tuple):
        out += pickle.MARK
        for item in obj:
            _emit(item, out)
        out += pickle.TUPLE
    elif isinstance(obj, list):
        out += pickle.EMPTY_LIST
        if obj:
            out += pickle.MARK
            for item in obj:
                _emit(item, out)
            out += pickle.APPENDS
    elif isinstance(obj, dict):
        out += pickle.EMPTY_DICT
        if obj:
            out += pickle.MARK
            for key, value in obj.items():
                _emit(key, out)
                _emit(value, out)
            out += pickle.SETITEMS
    else:
        raise TypeError(f"cannot emit {type(obj).__name__}")


def write_zip(path: Union[StrPath, BinaryIO], records: Mapping[str, bytes], *, archive: str = "archive",
              compression: int = zipfile.ZIP_STORED) -> None:
    """A zip with each record under ``<archive>/``, stored uncompressed like torch does."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in records.items():
            zf.writestr(f"{archive}/{name}", data)


# --------------------------------------------------------------------------------------------
# Saving float arrays
# --------------------------------------------------------------------------------------------

# numpy dtype -> (torch storage class, safetensors dtype name)
_FLOAT_TYPES: dict[np.dtype[Any], tuple[str, str]] = {
    np.dtype(np.float32): ("FloatStorage", "F32"),
    np.dtype(np.float16): ("HalfStorage", "F16"),
}


def _float_array(name: str, value: Any) -> Array:
    array = np.asarray(value)
    if array.dtype not in _FLOAT_TYPES:
        if array.dtype.kind != "f":
            raise ValueError(f"tensor {name!r} has dtype {array.dtype}; only float16/float32 are written")
        array = array.astype(np.float32)
    # Little-endian, C order: the layout both formats store.
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


def _contiguous_strides(shape: Iterable[int]) -> tuple[int, ...]:
    strides: list[int] = []
    step = 1
    for n in reversed(tuple(shape)):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def save_pth(path: StrPath, tensors: Mapping[str, Array]) -> None:
    """Save ``{name: float16/float32 array}`` as a zip-format ``torch.save`` file of an
    OrderedDict of tensors (what ``torch.save(state_dict, path)`` writes). Other float dtypes are
    stored as float32. The file is written to a temporary name and renamed at the end."""
    arrays = {name: _float_array(name, value) for name, value in tensors.items()}
    entries = []
    records: dict[str, bytes] = {}
    for key, (name, array) in enumerate(arrays.items()):
        storage_class = _FLOAT_TYPES[array.dtype.newbyteorder("=")][0]
        storage = PersId(("storage", Global("torch", storage_class), str(key), "cpu", array.size))
        rebuilt = Call(Global("torch._utils", "_rebuild_tensor_v2"), (
            storage, 0, tuple(int(n) for n in array.shape), _contiguous_strides(array.shape), False,
            Call(Global("collections", "OrderedDict"), ()),
        ))
        entries.append((name, rebuilt))
        records[f"data/{key}"] = array.tobytes()
    tree = Call(Global("collections", "OrderedDict"), (entries,))
    # torch reads data.pkl first and the version record to pick its reader; order as torch has it.
    ordered = {"data.pkl": dumps(tree), "byteorder": b"little", **records, "version": b"3\n"}
    write_atomically(path, lambda f: write_zip(f, ordered))


def save_safetensors(path: StrPath, tensors: Mapping[str, Array], metadata: Mapping[str, str] | None = None) -> None:
    """Save ``{name: float16/float32 array}`` as a ``.safetensors`` file (8-byte header length,
    JSON header, data), atomically like :func:`save_pth`."""
    arrays = {name: _float_array(name, value) for name, value in tensors.items()}
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, array in arrays.items():
        dtype_name = _FLOAT_TYPES[array.dtype.newbyteorder("=")][1]
        header[name] = {"dtype": dtype_name, "shape": [int(n) for n in array.shape],
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the format pads the header so the data starts 8-aligned

    def write(f: BinaryIO) -> None:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for array in arrays.values():
            f.write(array.tobytes())

    write_atomically(path, write)
