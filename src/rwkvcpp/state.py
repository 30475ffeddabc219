"""Saved states: a model's whole recurrent state in a file, exactly, with the model it belongs to.

An RNN's context is its state, so saving it saves a conversation: :meth:`Model.save_state`
writes it and :meth:`Model.load_state` gives back the same float32 array, bit for bit.

The file is a ``.safetensors`` file. The format is a JSON header followed by raw little-endian
data, so loading it runs no code (unlike a pickle), any safetensors reader in any language can
open it, and its metadata (string pairs in the header) can carry the model's identity:

* one tensor, ``state``: float32, shape ``(state_len,)``, the state in rwkv.cpp's order
  (docs/FORMAT.md, "State");
* ``__metadata__``: ``format`` = ``rwkvcpp-state``, ``format_version``, the model's
  ``arch``, ``n_vocab``, ``n_embed``, ``n_layer``, ``n_head``, ``head_size``, ``state_len``,
  ``model_hash`` (SHA-256 of the model file's header and tensor table: names, types, shapes;
  the weights themselves are not read), ``model_file`` and ``model_dtype`` (for messages), and
  ``state_sha256`` (of the data, so that a damaged file is refused rather than loaded).

On load, sizes that differ mean the state cannot work with the model and are always refused.
A different ``model_hash`` with the same sizes is refused too, unless ``strict=False``: the
usual reason is a quantized copy of the same weights, whose state is interchangeable. Weights are
not hashed (that would read gigabytes), so two files of the same layout, such as two fine-tunes of
one base model in the same format, look the same.

These files are not state-tuning files (``blocks.N.att.time_state`` tensors holding only the
wkv matrices): those are :meth:`Model.load_tuned_state` / :meth:`Model.save_tuned_state`.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import TYPE_CHECKING, Union

import numpy as np

from ._core import RWKVError

if TYPE_CHECKING:
    from .model import Model

__all__ = ["StateFileError", "save_state", "load_state", "model_hash"]

FORMAT = "rwkvcpp-state"
FORMAT_VERSION = 1
TENSOR = "state"
# Sizes that must match for a state to fit a model, in the order messages list them.
SIZES = ("arch", "n_vocab", "n_embed", "n_layer", "n_head", "head_size", "state_len")
# A state's header is a few hundred bytes; anything far larger is not one of these files.
MAX_HEADER_BYTES = 1 << 16

PathLike = Union[str, "os.PathLike[str]"]


class StateFileError(RWKVError, ValueError):
    """A state file that is damaged, not a state file, or saved with another model."""


def model_hash(path: PathLike) -> str:
    """SHA-256 (hex) of a model file's header and tensor table (each tensor's name, type and
    shape, in file order). Reads only the records' headers, never the weights."""
    from .format import iter_records, read_header

    digest = hashlib.sha256()
    header = read_header(path)
    digest.update(f"{FORMAT}-model {tuple(header)}\n".encode())
    for record in iter_records(path):
        digest.update(f"{record.name} {record.type_id} {record.shape}\n".encode())
    return digest.hexdigest()


def _identity(model: Model) -> dict[str, str]:
    return {name: str(getattr(model, name)) for name in SIZES}


def save_state(path: PathLike, state: np.ndarray, model: Model) -> None:
    """Writes ``state`` (a whole state of ``model``) and the model's identity to ``path``
    (a temporary file renamed at the end, so an existing file is never left half-written)."""
    from .conversion.pth_write import save_safetensors

    state = model._check_state(state, "state")
    data = np.ascontiguousarray(state, dtype="<f4")
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        **_identity(model),
        "model_hash": model.model_hash,
        "model_file": os.path.basename(model.path),
        "model_dtype": model.dtype,
        "state_sha256": hashlib.sha256(data.tobytes()).hexdigest(),
    }
    save_safetensors(path, {TENSOR: data}, metadata=metadata)


def load_state(path: PathLike, model: Model, strict: bool = True) -> np.ndarray:
    """The state saved in ``path``: a new float32 array, exactly as it was saved.

    Raises :class:`StateFileError` (naming the file and what is wrong) for a file that is not
    such a state file, is truncated or damaged, or was saved with a model of other sizes; and,
    when ``strict``, with a model file of another header or tensor table.
    """
    path = os.fspath(path)
    metadata, offset, nbytes = _read_header(path)
    _check_identity(path, metadata, model, strict)
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read(nbytes)
    if len(raw) != nbytes:  # the file shrank since its size was checked
        raise StateFileError(f"{path}: truncated: the state needs {nbytes} bytes, the file has {len(raw)}")
    if hashlib.sha256(raw).hexdigest() != metadata.get("state_sha256"):
        raise StateFileError(f"{path}: the state data is damaged (its SHA-256 is not the one saved with it)")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def _read_header(path: str) -> tuple[dict[str, str], int, int]:
    """(metadata, data offset, data size) of a state file, checked against the file's size."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise StateFileError(f"{path}: not a saved state: the file is {file_size} bytes long")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
            raise StateFileError(f"{path}: not a saved state, or truncated (its header claims {header_len} bytes; "
                                 f"the file has {file_size})")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise StateFileError(f"{path}: not a saved state (no readable safetensors header)") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        hint = ""
        if isinstance(header, dict) and any(str(name).endswith("att.time_state") for name in header):
            hint = ": it is a state-tuning file; load it with Model.load_tuned_state"
        raise StateFileError(f"{path}: not a state saved by Model.save_state{hint}")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise StateFileError(f"{path}: state file format version {metadata.get('format_version')!r}; this "
                             f"rwkvcpp reads version {FORMAT_VERSION}")
    entry = header.get(TENSOR)
    tensors = [name for name in header if name != "__metadata__"]
    state_len = metadata.get("state_len", "")
    wanted = {"dtype": "F32", "shape": [int(state_len)] if state_len.isdigit() else None}
    if (tensors != [TENSOR] or not isinstance(entry, dict) or entry.get("dtype") != wanted["dtype"]
            or entry.get("shape") != wanted["shape"]):
        raise StateFileError(f"{path}: damaged state file: expected one float32 tensor {TENSOR!r} of "
                             f"{state_len} values, found {_describe(header)}")
    nbytes = 4 * int(state_len)
    offset = 8 + header_len
    if entry.get("data_offsets") != [0, nbytes] or offset + nbytes != file_size:
        problem = "truncated" if offset + nbytes > file_size else "damaged"
        raise StateFileError(f"{path}: {problem}: the state needs {offset + nbytes} bytes, the file has {file_size}")
    return {str(k): str(v) for k, v in metadata.items()}, offset, nbytes


def _describe(header: dict[str, object]) -> str:
    parts = [f"{name} {info.get('dtype')} {info.get('shape')}" if isinstance(info, dict) else repr(name)
             for name, info in header.items() if name != "__metadata__"]
    return ", ".join(parts) or "no tensors"


def _check_identity(path: str, saved: dict[str, str], model: Model, strict: bool) -> None:
    ours = _identity(model)
    differ = [f"{name} {saved.get(name)} (this model: {ours[name]})" for name in SIZES if saved.get(name) != ours[name]]
    if differ:
        raise StateFileError(f"{path}: the state was saved with another model ({saved.get('model_file')}); "
                             f"it differs in {', '.join(differ)}")
    if strict and saved.get("model_hash") != model.model_hash:
        raise StateFileError(
            f"{path}: the state was saved with another model file ({saved.get('model_file')}, "
            f"{saved.get('model_dtype')}) of the same sizes: its header and tensor table differ from "
            f"{os.path.basename(model.path)} ({model.dtype}). If both hold the same weights (a quantized copy, "
            "say), load it with strict=False"
        )
