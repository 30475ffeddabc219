"""Writing rwkv.cpp model files (``.bin``, docs/FORMAT.md), the counterpart of :mod:`rwkvcpp.format`.

``BinWriter`` writes a file record by record, atomically; converters and tests build files with
it. ``write_model`` writes a whole checkpoint (BlinkDL's tensor names, PyTorch shapes, in the
order of the original ``.pth``): its tensors as the file stores them
(:func:`rwkvcpp.conversion.transform.transform_checkpoint`), each FP16 or FP32 by docs/FORMAT.md's
rule.
"""

from __future__ import annotations

import os
import re
import struct
from typing import BinaryIO, Optional, Sequence, Union

import numpy as np

from . import format as fmt
from .conversion.transform import detect_checked, embedding_shape, transform_checkpoint
from ._typing import Array, Checkpoint, StrPath
from .atomic_file import AtomicFile
from .format import FP16, FP32

__all__ = ["BinWriter", "write_model"]

_LN1_NAME = re.compile(r"^blocks\.(\d+)\.ln1\.weight$")


class BinWriter:
    """Writes one ``.bin`` file record by record, atomically.

    Data goes to a new file beside the destination (:mod:`rwkvcpp.atomic_file`: unnamed until
    complete on Linux), which replaces the destination only when the writer is closed without
    error (leaving the ``with`` block normally, or ``close()``). On an exception, or ``abort()``,
    the new file is deleted and the destination is left as it was. A destination that is not a
    regular file, is read-only or has several hard links is refused; a symbolic link is written
    through. All numbers are written little-endian whatever the host.
    """

    def __init__(self, path: StrPath, n_vocab: int, n_embed: int, n_layer: int, data_type: Union[str, int] = FP16):
        self.path = os.fspath(path)
        for field, value in (("n_vocab", n_vocab), ("n_embed", n_embed), ("n_layer", n_layer)):
            if not isinstance(value, (int, np.integer)) or not 0 < value < 2**31:
                raise ValueError(f"{self.path}: {field} must be a positive int32, got {value!r}")
        self.data_type = fmt.type_id(data_type)
        self._names: set[str] = set()
        self._output = AtomicFile(self.path)
        self._file: Optional[BinaryIO] = self._output.file
        try:
            header = (fmt.MAGIC, fmt.VERSION, int(n_vocab), int(n_embed), int(n_layer), self.data_type)
            self._check_open().write(struct.pack(fmt.HEADER_FORMAT, *header))
        except BaseException:
            self.abort()
            raise

    @property
    def closed(self) -> bool:
        return self._file is None

    def __enter__(self) -> "BinWriter":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _check_open(self) -> BinaryIO:
        if self._file is None:
            raise ValueError(f"{self.path}: writer is already closed")
        return self._file

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
        file = self._check_open()
        file.write(struct.pack(f"<3i{len(sizes)}i", len(sizes), len(raw_name), type_id_, *sizes))
        file.write(raw_name)
        self._names.add(name)

    def write_tensor(self, name: str, array: Array, type_id: Union[str, int, None] = None) -> None:
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
        self._check_open().write(data.reshape(-1).view(np.uint8).data)

    def write_raw(self, name: str, type_id: Union[str, int], shape: Sequence[int],
                  data: Union[Array, bytes, bytearray, memoryview]) -> None:
        """Writes already-encoded data (e.g. quantized blocks) for a tensor of PyTorch shape ``shape``."""
        self._check_open()
        tid = fmt.type_id(type_id)
        shape = tuple(int(s) for s in shape)
        try:
            expected = fmt.tensor_nbytes(tid, shape)
        except ValueError as e:
            raise ValueError(f"{self.path}: tensor {name!r}: {e}") from None
        # an array's .data is its memoryview (numpy's stubs declare the buffer protocol for Python 3.12+ only)
        view = (data.data if isinstance(data, np.ndarray) else memoryview(data)).cast("B")
        if view.nbytes != expected:
            raise ValueError(
                f"{self.path}: tensor {name!r}: {fmt.type_name(tid)} {shape} needs {expected} bytes, "
                f"got {view.nbytes}"
            )
        self._write_record_header(name, tid, shape)
        self._check_open().write(view)

    def close(self) -> None:
        """Finishes the file and moves it over the destination."""
        if self._file is None:
            return
        self._file = None
        self._output.commit()

    def abort(self) -> None:
        """Discards everything written; the destination is untouched. Never raises for a write
        that failed (a full disk): the new file is removed first."""
        self._file = None
        self._output.abort()


def _count_layers(checkpoint: Checkpoint) -> int:
    return sum(1 for name in checkpoint if _LN1_NAME.match(name))


def write_model(path: StrPath, checkpoint: Checkpoint, dtype: Union[str, int] = "FP16") -> None:
    """Converts a checkpoint (names and shapes of BlinkDL's ``.pth``) into an rwkv.cpp file.

    ``dtype`` is "FP16" (2-D matrices as FP16 per docs/FORMAT.md's rule, the rest FP32) or
    "FP32". Quantized files are made from these by quantizing afterwards.
    """
    data_type = fmt.type_id(dtype)
    if data_type not in (FP32, FP16):
        raise ValueError(
            f"write_model writes FP32 or FP16 files, not {fmt.type_name(data_type)}; quantize the result instead"
        )
    n_vocab, n_embed = embedding_shape(checkpoint)
    n_layer = _count_layers(checkpoint)
    if n_layer == 0:
        raise ValueError("checkpoint has no 'blocks.N.ln1.weight': no layers found")
    if "head.weight" not in checkpoint:
        raise ValueError("checkpoint has no 'head.weight'")
    arch = detect_checked(checkpoint)

    with BinWriter(path, n_vocab, n_embed, n_layer, data_type) as writer:
        for name, array in transform_checkpoint(checkpoint, arch):
            as_fp16 = data_type == FP16 and arch.stored_as_fp16(name, array.shape)
            writer.write_tensor(name, array, FP16 if as_fp16 else FP32)
