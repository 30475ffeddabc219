"""Checkpoint readers: PyTorch ``.pth``/``.bin``, safetensors and Hugging Face folders, read
without torch and without running code from the file, one tensor at a time.

``load_checkpoint(path)`` returns a :class:`LazyCheckpoint`: an ordered ``Mapping[str,
np.ndarray]`` whose ``checkpoint[name]`` reads just that tensor as float32, with ``shape_of``/
``dtype_of`` to look at tensors without reading them. What a path holds is decided from its
content, not its name:

* a zip (``torch.save`` >= 1.6: ``.pth``, ``.pt``, HF ``pytorch_model.bin``) or a legacy torch
  pickle -> :mod:`rwkvcpp.checkpoints.pth` (restricted unpickler);
* a safetensors file -> read here from its JSON header (numpy has no bf16, and this way
  safetensors is not a dependency);
* a ``*.index.json`` (HF sharded checkpoint) or a folder -> the union of the shards.

Names are returned as the file has them; :func:`rwkvcpp.checkpoints.hf.to_native_names` maps Hugging
Face RWKV names back to the BlinkDL names the writer expects.
"""

from __future__ import annotations

import json
import math
import os
import re

from .hf import is_hf_layout, to_native_names
from .pth import (
    DTYPE_NAMES,
    CheckpointError,
    LazyCheckpoint,
    LazyTensor,
    UnsafeCheckpointError,
    _RAW_DTYPES,
    _Storage,
    read_torch_legacy,
    read_torch_zip,
)

__all__ = [
    "load_checkpoint",
    "read_safetensors",
    "LazyCheckpoint",
    "LazyTensor",
    "CheckpointError",
    "UnsafeCheckpointError",
    "is_hf_layout",
    "to_native_names",
    "rwkv_order_key",
    "DTYPE_NAMES",
]


# --------------------------------------------------------------------------------------------
# Tensor order
# --------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"(\d+)")
# RWKV's top-level parts in model order; HF names are ranked after stripping "rwkv.".
_SECTIONS = {"emb": 0, "embeddings": 0, "blocks": 1, "ln_out": 2, "head": 3}
# A block's parts in the order they run (native and HF names).
_BLOCK_PARTS = {"ln0": 0, "pre_ln": 0, "ln1": 1, "ln2": 2, "att": 3, "attention": 3,
                "ffn": 4, "feed_forward": 4}


def _natural_key(text: str):
    """'blocks.10' sorts after 'blocks.9'. Pairs keep ints and strings from being compared."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in _NUMBER.split(text) if part)


def rwkv_order_key(name: str):
    """Sort key putting tensors in model order: embedding, blocks by number (each: ln0, ln1, ln2,
    att, ffn), ln_out, head, then anything else. Used where the file itself has no meaningful
    order (safetensors writers sort names alphabetically, which puts blocks.10 before blocks.2)."""
    bare = name.removeprefix("rwkv.")
    parts = bare.split(".")
    section = _SECTIONS.get(parts[0], 4)
    if section == 1 and len(parts) > 2 and parts[1].isdigit():
        return (section, int(parts[1]), _BLOCK_PARTS.get(parts[2], 5), _natural_key(bare))
    return (section, 0, 0, _natural_key(bare))


# --------------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}
# The safetensors library refuses headers over 100 MB; a larger one is corrupt or hostile.
_MAX_SAFETENSORS_HEADER = 100_000_000


def _is_int_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def read_safetensors(path) -> LazyCheckpoint:
    """Read a ``.safetensors`` file: 8-byte little-endian header length, a JSON header mapping
    names to dtype, shape and [begin, end) data offsets, then the data. Tensors are ordered by
    :func:`rwkv_order_key`."""
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
        header = json.loads(header_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
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
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise CheckpointError(f"{filename}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not (_is_int_list(shape) and all(n >= 0 for n in shape) and _is_int_list(offsets)
                and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{filename}: malformed header entry for {name!r}")
        begin, end = offsets
        if end > data_size:
            raise CheckpointError(f"{filename}: truncated: tensor {name!r} ends past the end of the file")
        if end - begin != math.prod(shape) * _RAW_DTYPES[dtype].itemsize:
            raise CheckpointError(f"{filename}: tensor {name!r}: {end - begin} bytes for shape {shape}")
        storage = _Storage(name, dtype, math.prod(shape)).bind(path, data_start + begin, end - begin)
        tensors[name] = LazyTensor(storage, 0, shape)
    ordered = sorted(tensors, key=rwkv_order_key)
    return LazyCheckpoint(((n, tensors[n]) for n in ordered), source=path)


# --------------------------------------------------------------------------------------------
# Sharded checkpoints and folders
# --------------------------------------------------------------------------------------------


def _read_index(path: str) -> LazyCheckpoint:
    """HF sharded checkpoint: ``{"weight_map": {tensor name: shard file}}``. Shards are read in
    file-name order, tensors in each shard's own order, keeping only those the map assigns to
    that shard (as transformers does)."""
    filename = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{filename}: not a valid JSON index ({exc})") from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f"{filename}: a JSON file without a weight_map; not a sharded checkpoint index")

    folder = os.path.dirname(os.path.abspath(path))
    tensors: dict[str, LazyTensor] = {}
    for shard in sorted(set(weight_map.values()), key=_natural_key):
        # Shards live beside the index; refuse names that would lead elsewhere.
        if os.path.isabs(shard) or os.path.normpath(shard).split(os.sep)[0] == os.pardir:
            raise CheckpointError(f"{filename}: shard {shard!r} lies outside the checkpoint folder")
        shard_path = os.path.join(folder, shard)
        if not os.path.isfile(shard_path):
            raise CheckpointError(f"{filename}: shard {shard} is missing")
        part = _load_file(shard_path)
        wanted = {name for name, s in weight_map.items() if s == shard}
        missing = sorted(wanted - set(part))
        if missing:
            raise CheckpointError(f"{shard}: does not hold {missing[0]!r}, which {filename} "
                                  f"places there ({len(missing)} tensors missing)")
        for name, tensor in part.lazy_items():
            if name in wanted:
                tensors[name] = tensor
    return LazyCheckpoint(tensors, source=path)


# In a folder, the first of these that exists is the checkpoint (HF's own preference order).
_FOLDER_CANDIDATES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".index.json")


def _resolve_folder(path: str) -> str:
    for candidate in _FOLDER_CANDIDATES:
        if os.path.isfile(os.path.join(path, candidate)):
            return os.path.join(path, candidate)
    found = sorted(
        name for name in os.listdir(path)
        if name.endswith(_CHECKPOINT_SUFFIXES) and not name.startswith("training_args")
        and os.path.isfile(os.path.join(path, name))
    )
    # Shards listed by an index are read through the index, not one by one.
    indexes = [name for name in found if name.endswith(".index.json")]
    if len(indexes) == 1:
        return os.path.join(path, indexes[0])
    if len(found) == 1:
        return os.path.join(path, found[0])
    if not found:
        raise CheckpointError(f"{path}: no checkpoint (.pth, .safetensors, .bin) in this folder")
    raise CheckpointError(f"{path}: several checkpoints in this folder ({', '.join(found[:6])}); "
                          "pass the file to convert")


# --------------------------------------------------------------------------------------------
# Dispatch on content
# --------------------------------------------------------------------------------------------


def _sniff(path: str) -> str:
    """What a file holds, from its first bytes: "zip", "pickle", "safetensors" or "json"; raises
    CheckpointError naming the format when it is something else we recognise."""
    filename = os.path.basename(path)
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise CheckpointError(f"{filename}: the file is empty")
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"PK\x05\x06"):
        raise CheckpointError(f"{filename}: an empty zip archive")
    if head[:1] == b"\x80":  # pickle PROTO opcode: a legacy torch.save file (or a plain pickle)
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 2**32:
        return "safetensors"
    if head.lstrip()[:1] == b"{":
        return "json"
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{filename}: a Git LFS pointer, not the checkpoint itself; "
                              "fetch the real file (git lfs pull)")
    if head[:4] == b"fmgg":
        raise CheckpointError(f"{filename}: already an rwkv.cpp model file, not a checkpoint")
    if head[:4] == b"GGUF":
        raise CheckpointError(f"{filename}: a GGUF file, not a PyTorch/safetensors checkpoint")
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise CheckpointError(f"{filename}: the tar-based torch serialization (torch < 0.4) is "
                              "not supported; re-save it with a recent torch")
    raise CheckpointError(f"{filename}: not a recognised checkpoint (neither a torch zip, a "
                          "legacy torch pickle, nor safetensors)")


def _load_file(path: str) -> LazyCheckpoint:
    kind = _sniff(path)
    if kind == "zip":
        return read_torch_zip(path)
    if kind == "pickle":
        return read_torch_legacy(path)
    if kind == "safetensors":
        return read_safetensors(path)
    return _read_index(path)


def load_checkpoint(path) -> LazyCheckpoint:
    """Open a checkpoint lazily: a ``.pth``/``.pt``/``.bin`` torch file, a ``.safetensors`` file,
    a sharded ``*.index.json``, or a folder holding one of these. Only the headers and the pickle
    are read here; tensor data is read by ``checkpoint[name]``.

    Raises :class:`CheckpointError` (a ``ValueError``) for anything unreadable, and its subclass
    :class:`UnsafeCheckpointError` when a pickle asks for code a checkpoint never needs.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = _resolve_folder(path)
    elif not os.path.exists(path):
        raise FileNotFoundError(path)
    return _load_file(path)
