"""Write ``torch.save``-style checkpoints without torch, so the reader can be tested where torch
is not installed.

The pickle is emitted opcode by opcode (protocol 2, the one torch uses), because the pickle
module can only name globals that exist in the writing process, and torch's do not here. A pickle
is described as a tree of plain values (None, bool, int, str, tuple, list, dict) and node
types (:class:`Global`, :class:`Call`, :class:`PersId`, :class:`Build`, imported from
rwkvcpp.conversion.pth_write). The same tree language builds malicious pickles.
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass

import numpy as np

# The pickle emitter lives in the package (state files are written with it at run time); it is
# re-exported here so tests keep using pw.Global, pw.Call, pw.dumps, ...
from rwkvcpp.conversion.pth_write import Build, Call, Global, PersId, dumps, write_zip  # noqa: F401

# ---------------------------------------------------------------------------- tensors

STORAGE_CLASS = {"float32": "FloatStorage", "float16": "HalfStorage", "bfloat16": "BFloat16Storage"}


def to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounding to nearest even like torch."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def encode(values: np.ndarray, dtype: str) -> np.ndarray:
    """The raw little-endian elements of ``values`` stored as ``dtype``."""
    if dtype == "bfloat16":
        return to_bf16_bits(values)
    return np.asarray(values, dtype={"float32": np.float32, "float16": np.float16}[dtype])


@dataclass
class WTensor:
    """A tensor to write: a view (offset, shape, strides in elements) into a 1-D storage."""

    storage: np.ndarray  # raw elements (uint16 for bf16), 1-D
    dtype: str
    shape: tuple
    strides: tuple
    offset: int = 0
    storage_key: str | None = None  # tensors with the same key share one storage
    parameter: bool = False  # wrap in torch._utils._rebuild_parameter like nn.Parameter


def tensor(values: np.ndarray, dtype: str = "float32", *, transpose: bool = False,
           offset: int = 0, parameter: bool = False) -> WTensor:
    """A WTensor holding ``values``. ``transpose`` stores it column-major (the tensor is then a
    non-contiguous view, like torch's ``x.t()``); ``offset`` puts junk elements first."""
    values = np.asarray(values, dtype=np.float32)
    if transpose:
        assert values.ndim == 2
        flat = np.ascontiguousarray(values.T).reshape(-1)
        strides = (1, values.shape[0])
    else:
        flat = values.reshape(-1)
        strides = contiguous_strides(values.shape)
    junk = np.full(offset, 7.0, np.float32)
    raw = encode(np.concatenate([junk, flat]), dtype)
    return WTensor(raw, dtype, tuple(values.shape), strides, offset, parameter=parameter)


def contiguous_strides(shape) -> tuple:
    strides, step = [], 1
    for n in reversed(tuple(shape)):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def storage_pid(key: str, dtype: str, numel: int, legacy: bool = False) -> PersId:
    pid = ("storage", Global("torch", STORAGE_CLASS[dtype]), key, "cpu", numel)
    return PersId(pid + (None,) if legacy else pid)


def tensor_node(t: WTensor, key: str, legacy: bool = False):
    node = Call(Global("torch._utils", "_rebuild_tensor_v2"), (
        storage_pid(key, t.dtype, t.storage.size, legacy), t.offset, tuple(t.shape),
        tuple(t.strides), False, Call(Global("collections", "OrderedDict"), ()),
    ))
    if t.parameter:
        node = Call(Global("torch._utils", "_rebuild_parameter"),
                    (node, True, Call(Global("collections", "OrderedDict"), ())))
    return node


def _layout(tensors: dict, legacy: bool):
    """(pickle tree, {storage key: WTensor owning the storage})."""
    storages: dict = {}
    entries = {}
    for name, t in tensors.items():
        key = t.storage_key or str(len(storages))
        storages.setdefault(key, t)
        entries[name] = tensor_node(t, key, legacy)
    return entries, storages


def _raw_bytes(t: WTensor, big_endian: bool) -> bytes:
    return t.storage.astype(t.storage.dtype.newbyteorder(">" if big_endian else "<")).tobytes()


def write_pth(path, tensors: dict, *, big_endian: bool = False, wrap: str | None = None,
              archive: str = "archive", compression: int = zipfile.ZIP_STORED) -> None:
    """Write a zip-format torch checkpoint of ``{name: WTensor}``. ``wrap`` nests the dict under
    that key (like Lightning's {"state_dict": ...}); ``compression`` other than ZIP_STORED makes
    a zip torch itself never writes (a re-zipped checkpoint)."""
    entries, storages = _layout(tensors, legacy=False)
    tree = Call(Global("collections", "OrderedDict"), ([(k, v) for k, v in entries.items()],))
    if wrap:
        tree = {wrap: tree, "epoch": 3}
    records = {"data.pkl": dumps(tree), "byteorder": b"big" if big_endian else b"little"}
    records.update({f"data/{k}": _raw_bytes(t, big_endian) for k, t in storages.items()})
    records["version"] = b"3\n"
    write_zip(path, records, archive=archive, compression=compression)


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def write_legacy_pth(path, tensors: dict, *, main_tree=None) -> None:
    """Write the pre-zip torch format: magic, protocol, sys_info, the object, the storage keys,
    then per storage an int64 element count and the data."""
    entries, storages = _layout(tensors, legacy=True)
    tree = main_tree if main_tree is not None else entries
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}
    keys = sorted(storages)
    with open(path, "wb") as f:
        for obj in (LEGACY_MAGIC, 1001, sys_info, tree, keys):
            f.write(dumps(obj))
        for key in keys:
            t = storages[key]
            f.write(struct.pack("<q", t.storage.size))
            f.write(_raw_bytes(t, False))
