"""Quantizing an FP32/FP16 rwkv.cpp model file to Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K or Q5_K.

The work is done by the C engine (``_core.quantize_file``), which streams the source tensor by
tensor and follows docs/FORMAT.md's reference rounding, so the output is byte-identical to rwkv.cpp's.
This module adds what a user-facing entry point needs around it: type names, refusing to
overwrite the source, an atomic result that is never left half-written (also on Ctrl-C), and a
summary of what was done.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Optional, Union

from . import format as fmt
from ._typing import StrPath

__all__ = ["QUANTIZED_TYPES", "QuantizeSummary", "quantize", "quantized_type_id"]

#: Names of the types a model can be quantized to, in type-id order.
QUANTIZED_TYPES = tuple(t.name for t in fmt.TYPES.values() if t.quantized)

ProgressFn = Callable[[int, int, str], None]


def quantized_type_id(type: Union[str, int]) -> int:
    """The type id of a quantized type name (case-insensitive, e.g. ``"q5_1"``) or id.

    Raises ValueError, listing the valid names, for anything else (including FP32/FP16).
    """
    valid = ", ".join(QUANTIZED_TYPES)
    try:
        tid = fmt.type_id(type)
    except ValueError:
        raise ValueError(f"unknown quantization type {type!r}; valid types: {valid}") from None
    if not fmt.TYPES[tid].quantized:
        raise ValueError(f"{fmt.type_name(tid)} is not a quantized type; valid types: {valid}")
    return tid


@dataclass(frozen=True)
class QuantizeSummary:
    """What ``quantize`` did."""

    src: str
    dst: str
    type: str  # the new type, e.g. "Q5_1"
    src_type: str  # the source's header data type, "FP32" or "FP16"
    src_bytes: int
    dst_bytes: int
    n_tensors: int
    n_quantized: int  # tensors stored in the new type
    seconds: float

    @property
    def ratio(self) -> float:
        """Output size as a fraction of the input size."""
        return self.dst_bytes / self.src_bytes if self.src_bytes else 0.0

    def __str__(self) -> str:
        return (
            f"{self.src_type} -> {self.type}: {format_size(self.src_bytes)} -> {format_size(self.dst_bytes)} "
            f"({self.ratio:.1%}), {self.n_quantized} of {self.n_tensors} tensors quantized, "
            f"{self.seconds:.1f} s"
        )


def format_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _check_paths(src: str, dst: str) -> None:
    """Refusals that are clearer here than the engine's errors about its temporary file."""
    if os.path.exists(src) and os.path.exists(dst) and os.path.samefile(src, dst):
        raise ValueError(f"{dst}: the destination is the source file; write the quantized model to another path")
    if os.path.isdir(dst):
        raise IsADirectoryError(f"{dst}: the destination is a directory; give a file path")
    parent = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{dst}: the destination directory {parent} does not exist")


def quantize(
    src: StrPath,
    dst: StrPath,
    type: Union[str, int] = "Q5_1",
    quantize_head: bool = False,
    progress: Optional[ProgressFn] = None,
) -> QuantizeSummary:
    """Quantizes the FP32/FP16 model ``src`` into a new file ``dst``.

    ``type`` is one of Q4_0, Q4_1, Q5_0, Q5_1 (the default), Q8_0, Q4_K and Q5_K, in any case. The K
    formats' 256-value super-blocks need every quantized matrix's rows to be a multiple of 256 long;
    a model with other rows is refused, naming the tensor. As docs/FORMAT.md
    says, only 2-D matrices are quantized, never ``emb.weight``, the v7 LoRA matrices or
    ``att.r_k``; ``head.weight`` only with ``quantize_head`` (faster, but files stay compatible
    with more readers without it). Everything else is copied unchanged.

    ``progress(done, total, name)`` is called after each tensor. ``dst`` is replaced only when
    the whole file is written; on any error, or Ctrl-C, it is left as it was.

    Raises ValueError for a bad type or a source that cannot be quantized (not a model, already
    quantized, ...), and OSError when a file cannot be read or written.
    """
    from . import _core  # the engine is imported only when it is needed

    tid = quantized_type_id(type)
    src, dst = os.fspath(src), os.fspath(dst)
    _check_paths(src, dst)

    # The engine writes a temporary file next to dst and renames it at the end; an exception in the
    # progress callback (Ctrl-C) cancels it, removes the temporary file and is raised here.
    start = time.perf_counter()
    _core.quantize_file(src, dst, tid, bool(quantize_head), progress)
    seconds = time.perf_counter() - start

    records = fmt.load_records(dst)
    return QuantizeSummary(
        src=src,
        dst=dst,
        type=fmt.type_name(tid),
        src_type=fmt.type_name(fmt.read_header(src).data_type),
        src_bytes=os.path.getsize(src),
        dst_bytes=os.path.getsize(dst),
        n_tensors=len(records),
        n_quantized=sum(1 for r in records if r.type_id == tid),
        seconds=seconds,
    )
