"""Open a checkpoint by what it holds: ``load_checkpoint(path)``.

Returns a :class:`~rwkvcpp.conversion.lazy.LazyCheckpoint`: an ordered ``Mapping[str,
np.ndarray]`` whose ``checkpoint[name]`` reads just that tensor as float32, with ``shape_of``/
``dtype_of`` to look at tensors without reading them. What a path holds is decided from its
content, not its name:

* a zip (``torch.save`` >= 1.6: ``.pth``, ``.pt``, HF ``pytorch_model.bin``) or a legacy torch
  pickle -> :mod:`rwkvcpp.conversion.pth` (restricted unpickler);
* a safetensors file -> :mod:`rwkvcpp.conversion.safetensors`;
* a ``*.index.json`` (HF sharded checkpoint) or a folder -> the union of the shards.

A new container format is one more reader module and one more case in :func:`_sniff`. Names are
returned as the file has them; :func:`rwkvcpp.conversion.hf.to_native_names` maps Hugging Face
RWKV names back to BlinkDL's.
"""

from __future__ import annotations

import os

from .._typing import StrPath
from . import untrusted_json
from .lazy import CheckpointError, LazyCheckpoint, TensorSource
from .pth import read_torch_legacy, read_torch_zip
from .safetensors import read_safetensors
from .schema import natural_key

__all__ = ["load_checkpoint"]

# An index maps each tensor name to a shard: {"metadata": {...}, "weight_map": {name: file}}.
_MAX_INDEX_BYTES = 100_000_000
_MAX_INDEX_DEPTH = 16

def _read_index(path: str) -> LazyCheckpoint:
    """HF sharded checkpoint: ``{"weight_map": {tensor name: shard file}}``. Shards are read in
    file-name order, tensors in each shard's own order, keeping only those the map assigns to
    that shard (as transformers does)."""
    filename = os.path.basename(path)
    try:
        index = untrusted_json.load_file(path, _MAX_INDEX_BYTES, _MAX_INDEX_DEPTH)
    except ValueError as exc:  # UnicodeDecodeError included
        raise CheckpointError(f"{filename}: not a valid JSON index ({exc})") from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f"{filename}: a JSON file without a weight_map; not a sharded checkpoint index")

    folder = os.path.dirname(os.path.abspath(path))
    tensors: dict[str, TensorSource] = {}
    for shard in sorted(set(weight_map.values()), key=natural_key):
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
    # safetensors first: its 8-byte header length may start with 0x80, pickle's first byte
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 2**32:
        return "safetensors"
    if head[:1] == b"\x80":  # pickle PROTO opcode: a legacy torch.save file (or a plain pickle)
        return "pickle"
    if head.lstrip()[:1] == b"{":
        return "json"
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(f"{filename}: a Git LFS pointer, not the checkpoint itself; "
                              "fetch the real file (git lfs pull)")
    if head[:4] == b"fmgg":
        raise CheckpointError(f"{filename}: already an rwkv.cpp model file, not a checkpoint")
    if head[:4] == b"GGUF":
        raise CheckpointError(f"{filename}: a llama.cpp GGUF model, not a PyTorch/safetensors checkpoint; "
                              "rwkvcpp.convert(src, dst) and `rwkvcpp convert` turn it into a .bin "
                              "(rwkvcpp.conversion.gguf)")
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


def load_checkpoint(path: StrPath) -> LazyCheckpoint:
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
