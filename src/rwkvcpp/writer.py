"""Writing rwkv.cpp model files (``.bin``) from PyTorch-style checkpoints.

A checkpoint here is a mapping from BlinkDL's tensor names (``emb.weight``, ``blocks.N.att.*``,
...) to float arrays in PyTorch shape, in the order of the original ``.pth``. ``write_model``
applies FORMAT.md's per-version transforms and the FP16 rule and writes the file atomically;
``BinWriter`` is the lower-level record writer that converters and tests build files with.
"""

from __future__ import annotations

import os
import re
import secrets
import struct
from typing import Iterator, Mapping, Sequence

import numpy as np

from . import format as fmt
from .format import FP16, FP32, HEAD_SIZE

__all__ = [
    "BinWriter",
    "detect_arch",
    "stored_as_fp16",
    "transform_checkpoint",
    "write_model",
]

# Name fragments of 2-D tensors that stay FP32 in an FP16 file (FORMAT.md).
FP32_NAME_FRAGMENTS = (".time_", ".k_k", ".k_a", ".r_k", ".x_rwkvag", ".x_k", ".w0", ".a0", ".v0")

# The six v7 token-shift mixes, in the order they are concatenated into att.x_rwkvag.
V7_MIX_NAMES = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")
# v7 low-rank matrices, stored transposed.
V7_LORA_NAMES = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")

_ATT_NAME = re.compile(r"^blocks\.(\d+)\.att\.(.+)$")
_LN1_NAME = re.compile(r"^blocks\.(\d+)\.ln1\.weight$")


def detect_arch(checkpoint: Mapping) -> str:
    """ "v4" | "v5.1" | "v5.2" | "v6" | "v7", from the checkpoint's key names."""
    return fmt.detect_arch_from_names(checkpoint.keys())


def _as_float32(name: str, value) -> np.ndarray:
    """A checkpoint entry as a float32 numpy array, or a ValueError naming the tensor."""
    if type(value).__module__.split(".")[0] == "torch":
        # A torch tensor (possibly bfloat16, which numpy cannot hold): widen on the torch side.
        if not value.is_floating_point():
            raise ValueError(f"tensor {name!r} has dtype {value.dtype}; expected floating point")
        return value.detach().to("cpu").float().numpy()
    if not isinstance(value, np.ndarray):
        raise ValueError(f"checkpoint entry {name!r} is a {type(value).__name__}, not an array")
    if value.dtype.kind != "f":
        raise ValueError(
            f"tensor {name!r} has dtype {value.dtype}; expected float16/float32/float64 "
            "(widen bfloat16 to float32 before converting)"
        )
    return value.astype(np.float32, copy=False)


def _shape_of(checkpoint: Mapping, name: str) -> tuple:
    """A tensor's shape, without reading its data when the mapping can tell (LazyCheckpoint)."""
    shape_of = getattr(checkpoint, "shape_of", None)
    return tuple(shape_of(name) if shape_of is not None else checkpoint[name].shape)


def _n_embed(checkpoint: Mapping) -> int:
    if "emb.weight" not in checkpoint:
        raise ValueError("checkpoint has no 'emb.weight': not an RWKV model, or not a full checkpoint")
    shape = _shape_of(checkpoint, "emb.weight")
    if len(shape) != 2:
        raise ValueError(f"'emb.weight' has shape {shape}; expected (n_vocab, n_embed)")
    return int(shape[1])


def _per_head(name: str, array: np.ndarray, n_head: int) -> np.ndarray:
    """Reshapes a per-head (H values) or per-channel (H*64 values) vector to (H, 1, 1) / (H, 64, 1)."""
    if array.size == n_head:
        return array.reshape(n_head, 1, 1)
    if array.size == n_head * HEAD_SIZE:
        return array.reshape(n_head, HEAD_SIZE, 1)
    raise ValueError(
        f"tensor {name!r} has {array.size} values; expected {n_head} (one per head) or "
        f"{n_head * HEAD_SIZE} (one per channel)"
    )


def _transform_v4(att_name: str, array: np.ndarray) -> np.ndarray:
    if att_name == "time_decay":
        return -np.exp(array)
    return array


def _transform_v5(name: str, att_name: str, array: np.ndarray, n_head: int) -> np.ndarray:
    if att_name == "time_decay":
        return _per_head(name, np.exp(-np.exp(array)), n_head)
    if att_name == "time_first":  # v5.1 only; v5.2 has time_faaaa, used as it is
        return _per_head(name, np.exp(array), n_head)
    if att_name == "time_faaaa":
        return _per_head(name, array, n_head)
    return array


def _transform_v6(name: str, att_name: str, array: np.ndarray, n_head: int) -> np.ndarray:
    if att_name in ("time_faaaa", "time_decay"):
        return _per_head(name, array, n_head)
    # Deviation from FORMAT.md: rwkv.cpp transposes every ".time_decay_w*" (w2 too); match its files.
    if att_name in ("time_maa_w1", "time_decay_w1", "time_decay_w2"):
        return np.ascontiguousarray(array.T)
    if att_name == "time_maa_w2":  # (5, D, C) -> (5, C, D)
        return np.ascontiguousarray(array.transpose(0, 2, 1))
    return array


def transform_checkpoint(checkpoint: Mapping) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (name, float32 array in PyTorch shape) as the file stores them, in checkpoint order.

    Implements FORMAT.md "From a PyTorch checkpoint to the file" (squeeze of ``.time_`` tensors,
    the per-version decay transforms, transposes, the v7 ``att.x_rwkvag`` concatenation). The FP16
    rule is not applied here: arrays are float32 whatever type they will be stored as.
    """
    arch = detect_arch(checkpoint)
    n_embed = _n_embed(checkpoint)
    if arch != "v4" and n_embed % HEAD_SIZE:
        raise ValueError(f"{arch} needs n_embed to be a multiple of {HEAD_SIZE}, got {n_embed}")
    n_head = n_embed // HEAD_SIZE

    for name, value in checkpoint.items():
        match = _ATT_NAME.match(name)
        layer, att_name = (int(match.group(1)), match.group(2)) if match else (None, None)

        if arch == "v7" and att_name in V7_MIX_NAMES:
            # The six mixes become one (6, 1, C) tensor at the position of att.x_r; the other
            # five produce nothing where they stand.
            if att_name != "x_r":
                continue
            parts = []
            for mix in V7_MIX_NAMES:
                key = f"blocks.{layer}.att.{mix}"
                if key not in checkpoint:
                    raise ValueError(f"v7 checkpoint has {name!r} but no {key!r}")
                part = _as_float32(key, checkpoint[key])
                if part.size != n_embed:
                    raise ValueError(f"tensor {key!r} has shape {part.shape}; expected (1, 1, {n_embed})")
                parts.append(part.reshape(1, 1, n_embed))
            yield f"blocks.{layer}.att.x_rwkvag", np.concatenate(parts, axis=0)
            continue

        array = _as_float32(name, value)
        if ".time_" in name:
            array = np.squeeze(array)
        if arch == "v4":
            array = _transform_v4(att_name, array)
        elif arch in ("v5.1", "v5.2"):
            array = _transform_v5(name, att_name, array, n_head)
        elif arch == "v6":
            array = _transform_v6(name, att_name, array, n_head)
        elif arch == "v7" and att_name in V7_LORA_NAMES:
            array = np.ascontiguousarray(array.T)
        if array.ndim == 0:
            raise ValueError(f"tensor {name!r} is a scalar; every tensor needs 1 to 3 dimensions")
        yield name, np.ascontiguousarray(array, dtype=np.float32)


def stored_as_fp16(name: str, shape: Sequence[int]) -> bool:
    """Whether a (transformed) tensor is stored as FP16 in an FP16 file (FORMAT.md's rule)."""
    return len(shape) == 2 and not any(fragment in name for fragment in FP32_NAME_FRAGMENTS)


class BinWriter:
    """Writes one ``.bin`` file record by record, atomically.

    Data goes to a temporary file next to the destination, which replaces the destination only
    when the writer is closed without error (leaving the ``with`` block normally, or ``close()``).
    On an exception, or ``abort()``, the temporary file is deleted and the destination is left as
    it was. All numbers are written little-endian whatever the host.
    """

    def __init__(self, path, n_vocab: int, n_embed: int, n_layer: int, data_type=FP16):
        self.path = os.fspath(path)
        for field, value in (("n_vocab", n_vocab), ("n_embed", n_embed), ("n_layer", n_layer)):
            if not isinstance(value, (int, np.integer)) or not 0 < value < 2**31:
                raise ValueError(f"{self.path}: {field} must be a positive int32, got {value!r}")
        self.data_type = fmt.type_id(data_type)
        self._names: set[str] = set()
        self._tmp_path = f"{self.path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        self._file = open(self._tmp_path, "xb")
        try:
            header = (fmt.MAGIC, fmt.VERSION, int(n_vocab), int(n_embed), int(n_layer), self.data_type)
            self._file.write(struct.pack(fmt.HEADER_FORMAT, *header))
        except BaseException:
            self.abort()
            raise

    @property
    def closed(self) -> bool:
        return self._file is None

    def __enter__(self) -> "BinWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _check_open(self) -> None:
        if self._file is None:
            raise ValueError(f"{self.path}: writer is already closed")

    def _write_record_header(self, name: str, type_id_: int, shape: tuple[int, ...]) -> None:
        if not isinstance(name, str):
            raise ValueError(f"{self.path}: tensor name must be a str, got {name!r}")
        raw_name = name.encode("utf-8")
        if not 1 <= len(raw_name) <= fmt.MAX_NAME_BYTES:
            raise ValueError(f"{self.path}: tensor name {name!r} must be 1..{fmt.MAX_NAME_BYTES} bytes of UTF-8")
        if name in self._names:
            raise ValueError(f"{self.path}: tensor {name!r} written twice")
        if not 1 <= len(shape) <= fmt.MAX_DIMS:
            raise ValueError(f"{self.path}: tensor {name!r} has shape {shape}; files hold 1 to 3 dimensions")
        if any(not 0 < s < 2**31 for s in shape):
            raise ValueError(f"{self.path}: tensor {name!r} has invalid shape {shape}")
        sizes = tuple(reversed(shape))  # the file lists sizes innermost first
        self._file.write(struct.pack(f"<3i{len(sizes)}i", len(sizes), len(raw_name), type_id_, *sizes))
        self._file.write(raw_name)
        self._names.add(name)

    def write_tensor(self, name: str, array, type_id=None) -> None:
        """Writes a float array (PyTorch shape) as FP32 or FP16.

        ``type_id`` defaults to FP16 for float16 input and FP32 otherwise. Quantized types need
        their blocks already encoded: use ``write_raw``.
        """
        self._check_open()
        array = np.asarray(array)
        if array.dtype.kind != "f":
            raise ValueError(f"{self.path}: tensor {name!r} has dtype {array.dtype}; expected a float array")
        if type_id is None:
            tid = FP16 if array.dtype == np.float16 else FP32
        else:
            tid = fmt.type_id(type_id)
        if tid not in (FP32, FP16):
            raise ValueError(
                f"{self.path}: tensor {name!r}: write_tensor encodes FP32/FP16 only; write "
                f"{fmt.type_name(tid)} blocks with write_raw"
            )
        with np.errstate(over="ignore"):  # FP16 overflow is reported below, with the tensor's name
            data = array.astype("<f4" if tid == FP32 else "<f2", order="C")
        if tid == FP16:
            overflow = np.isinf(data) & np.isfinite(array)
            if overflow.any():
                worst = float(np.max(np.abs(array[overflow])))
                raise ValueError(
                    f"{self.path}: tensor {name!r} has values up to {worst:g}, beyond the FP16 range; "
                    "store it as FP32"
                )
        shape = tuple(int(s) for s in array.shape)
        self._write_record_header(name, tid, shape)
        self._file.write(data.reshape(-1).view(np.uint8))

    def write_raw(self, name: str, type_id, shape: Sequence[int], data) -> None:
        """Writes already-encoded data (e.g. quantized blocks) for a tensor of PyTorch shape ``shape``."""
        self._check_open()
        tid = fmt.type_id(type_id)
        shape = tuple(int(s) for s in shape)
        try:
            expected = fmt.tensor_nbytes(tid, shape)
        except ValueError as e:
            raise ValueError(f"{self.path}: tensor {name!r}: {e}") from None
        view = memoryview(data).cast("B")
        if view.nbytes != expected:
            raise ValueError(
                f"{self.path}: tensor {name!r}: {fmt.type_name(tid)} {shape} needs {expected} bytes, "
                f"got {view.nbytes}"
            )
        self._write_record_header(name, tid, shape)
        self._file.write(view)

    def close(self) -> None:
        """Finishes the file and moves it over the destination."""
        if self._file is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self._tmp_path, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Discards everything written; the destination is untouched."""
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            os.unlink(self._tmp_path)
        except FileNotFoundError:
            pass


def _count_layers(checkpoint: Mapping) -> int:
    return sum(1 for name in checkpoint if _LN1_NAME.match(name))


def write_model(path, checkpoint: Mapping, dtype="FP16") -> None:
    """Converts a checkpoint (names and shapes of BlinkDL's ``.pth``) into an rwkv.cpp file.

    ``dtype`` is "FP16" (2-D matrices as FP16 per FORMAT.md's rule, the rest FP32) or "FP32".
    Quantized files are made from these by quantizing afterwards.
    """
    data_type = fmt.type_id(dtype)
    if data_type not in (FP32, FP16):
        raise ValueError(
            f"write_model writes FP32 or FP16 files, not {fmt.type_name(data_type)}; quantize the result instead"
        )
    n_embed = _n_embed(checkpoint)
    n_vocab = int(_shape_of(checkpoint, "emb.weight")[0])
    n_layer = _count_layers(checkpoint)
    if n_layer == 0:
        raise ValueError("checkpoint has no 'blocks.N.ln1.weight': no layers found")
    if "head.weight" not in checkpoint:
        raise ValueError("checkpoint has no 'head.weight'")

    with BinWriter(path, n_vocab, n_embed, n_layer, data_type) as writer:
        for name, array in transform_checkpoint(checkpoint):
            as_fp16 = data_type == FP16 and stored_as_fp16(name, array.shape)
            writer.write_tensor(name, array, FP16 if as_fp16 else FP32)
