"""Converting a checkpoint (``.pth``, ``.safetensors``, Hugging Face folder) into an rwkv.cpp model,
and models to and from llama.cpp's GGUF (the destination's extension decides).

``convert(src, dst)`` reads the checkpoint lazily (:func:`rwkvcpp.conversion.load.load_checkpoint`),
maps Hugging Face names back to BlinkDL's, checks the whole model from tensor shapes alone (no
data is read for that), then streams it tensor by tensor through
:func:`rwkvcpp.writer.write_model`, so memory stays at about one tensor whatever the model size.
With ``quantize=`` the FP16 file goes to a temporary file beside ``dst`` and is quantized into
``dst`` in the same call.

Everything is checked before anything is written: a bad checkpoint is reported as one line naming
the file and the problem (ValueError), and no destination file (nor temporary) is left behind,
on errors and on Ctrl-C alike.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Union

from .._typing import Array, StrPath

from .. import format as fmt
from ..atomic_file import check_destination
from ..arch import get as get_arch
from ..quantization import format_size, quantized_type_id
from ..writer import write_model
from .gguf import bin_to_gguf, gguf_to_bin, is_gguf
from .hf import is_hf_layout, to_native_names
from .lazy import CheckpointError, LazyCheckpoint
from .load import load_checkpoint
from .schema import ModelShape, inspect_checkpoint, model_order
from .transform import count_records

__all__ = ["convert", "open_checkpoint", "ConvertSummary"]

ProgressFn = Callable[[int, int, str], None]
LogFn = Callable[[str], None]
PathLike = StrPath


def _keeps_file_order(path: str) -> bool:
    """Whether a checkpoint file's tensor order is the model's own: true for torch files
    (torch.save keeps the state dict's order), false for safetensors (sorted by name) and
    sharded indexes."""
    if path.endswith(".json") or not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # a torch zip / legacy pickle


def open_checkpoint(src: PathLike) -> tuple[LazyCheckpoint, ModelShape]:
    """Opens ``src`` for conversion: native names, model order, checked. Reads no tensor data.

    Returns the lazy checkpoint and its :class:`ModelShape`; raises ValueError (one line naming
    the file) for anything that cannot be converted, FileNotFoundError for a missing path.
    """
    src = os.fspath(src)
    if not os.path.exists(src):
        raise FileNotFoundError(f"{src}: no such file or directory")
    checkpoint = load_checkpoint(src)  # CheckpointError messages already name the file
    hf = is_hf_layout(checkpoint)
    try:
        checkpoint = to_native_names(checkpoint)
    except CheckpointError as exc:
        raise CheckpointError(f"{src}: {exc}") from None
    shape = inspect_checkpoint(checkpoint, src)
    if hf or not _keeps_file_order(checkpoint.source):
        order = model_order(checkpoint, get_arch(shape.arch))
        checkpoint = LazyCheckpoint(((n, checkpoint.tensor(n)) for n in order), source=checkpoint.source)
    return checkpoint, shape


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertSummary:
    """What ``convert`` did."""

    src: str
    dst: str
    shape: ModelShape
    type: str  # the file's header data type: "FP16", "FP32", or the quantized type
    n_tensors: int  # records in the file
    dst_bytes: int
    seconds: float

    def __str__(self) -> str:
        return (f"{self.dst}: {self.type}, {self.n_tensors} tensors, {format_size(self.dst_bytes)}, "
                f"converted in {self.seconds:.1f} s")


class _Reading(Mapping[str, Array]):
    """The checkpoint as ``write_model`` sees it: reports each tensor's first read to
    ``progress`` and answers shape/membership questions without reading data."""

    def __init__(self, checkpoint: LazyCheckpoint, progress: Optional[ProgressFn], total: int):
        self._checkpoint = checkpoint
        self._progress = progress
        self._total = total
        self._seen: set[str] = set()

    def __getitem__(self, name: str) -> Array:
        value = self._checkpoint[name]
        # write_model may read a tensor twice (v7's six mixes are gathered into one record
        # where the first of them stands); count each once.
        if name not in self._seen:
            self._seen.add(name)
            if self._progress is not None:
                self._progress(len(self._seen), self._total, name)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._checkpoint)

    def __len__(self) -> int:
        return len(self._checkpoint)

    def __contains__(self, name: object) -> bool:  # Mapping's default would read the tensor
        return name in self._checkpoint

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self._checkpoint.shape_of(name)


def _file_type(dtype: object) -> str:
    """"FP16"/"FP32" from the names users give ("fp16", "float16", "f16", ...)."""
    key = str(dtype).strip().upper()
    aliases = {"FP16": "FP16", "FLOAT16": "FP16", "F16": "FP16", "HALF": "FP16",
               "FP32": "FP32", "FLOAT32": "FP32", "F32": "FP32", "FLOAT": "FP32"}
    if key not in aliases:
        raise ValueError(f"dtype must be FP16 or FP32, not {dtype!r}; quantized files are made with quantize=")
    return aliases[key]


def _check_destination(src: str, dst: str) -> None:
    if os.path.isdir(dst):
        raise IsADirectoryError(f"{dst}: the destination is a directory; give a file path")
    parent = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{dst}: the destination directory {parent} does not exist")
    if os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        raise ValueError(f"{dst}: the destination is the source checkpoint; write the model to another path")
    check_destination(dst, os.path.realpath(dst))  # before the work: a FIFO, read-only file... is refused


def _name_the_file(exc: ValueError, src: str, dst: str, tmp: Optional[str]) -> ValueError:
    """The writer's messages name a tensor (and sometimes the file it writes); make sure the
    message names a file the user knows, and never the temporary one."""
    message = str(exc)
    if tmp:
        message = message.replace(tmp, dst)
    if not message.startswith((src, os.path.basename(src), dst)):
        message = f"{src}: {message}"
    return ValueError(message)


def convert(
    src: PathLike,
    dst: PathLike,
    dtype: str = "FP16",
    quantize: Optional[Union[str, int]] = None,
    quantize_head: bool = False,
    progress: Optional[ProgressFn] = None,
    log: Optional[LogFn] = None,
) -> ConvertSummary:
    """Converts a checkpoint into an rwkv.cpp ``.bin`` model file.

    ``src`` is a ``.pth``/``.pt`` (read without torch, never running code from the file), a
    ``.safetensors`` file, a Hugging Face sharded ``*.index.json`` or a folder holding one of
    these; Hugging Face RWKV names are mapped back to BlinkDL's. ``dtype`` is "FP16" (matrices
    as FP16, the rest FP32: rwkv.cpp's usual file) or "FP32". ``quantize`` ("Q5_1", "Q8_0", ...)
    quantizes the result in the same call, as converting and then quantizing would;
    ``quantize_head`` then quantizes ``head.weight`` too.

    ``log(line)`` gets the detected architecture and sizes before anything is written, and a
    summary at the end. ``progress(done, total, name)`` is called as each tensor is read (and,
    when quantizing, as each is quantized; ``total`` counts both passes).

    A llama.cpp GGUF ``src`` (RWKV-6/7) becomes a ``.bin`` with the same tensors; a ``dst`` ending
    in ``.gguf`` gets a GGUF file llama.cpp runs, from a ``.bin`` or, through a ``.bin`` beside it,
    from a checkpoint (:mod:`rwkvcpp.conversion.gguf`).

    Raises ValueError (one line naming the file) for a checkpoint that cannot be converted, and
    OSError when a file cannot be read or written. Whatever happens, ``dst`` is either the
    complete new model or left as it was, and no temporary file remains.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    file_type = _file_type(dtype)
    qtype = None
    if quantize is not None:
        qtype = quantized_type_id(quantize)
    elif quantize_head:
        raise ValueError("quantize_head needs a quantized type (quantize=...)")
    _check_destination(src, dst)
    if dst.lower().endswith(".gguf") or is_gguf(src):
        return _convert_gguf(src, dst, file_type, qtype, quantize_head, progress, log)

    start = time.perf_counter()
    checkpoint, shape = open_checkpoint(src)
    if log is not None:
        log(f"{src}: {shape.describe()}")
        if shape.unused:
            shown = ", ".join(shape.unused[:4]) + (", ..." if len(shape.unused) > 4 else "")
            log(f"  {len(shape.unused)} tensors the engine does not use are copied as they are: {shown}")
        if any(name.endswith(".att.time_state") for name in shape.unused):
            # A state-tuned model with its initial state merged in (the official package starts
            # from it); the engine starts from zeros unless it is given that state.
            log(f"  it holds a tuned initial state: start from it with model.load_state_file({src!r})")

    n_read = len(checkpoint)
    n_records = count_records(checkpoint, get_arch(shape.arch))
    total = n_read + (n_records if qtype is not None else 0)
    reading = _Reading(checkpoint, progress, total)
    tmp = None
    try:
        if qtype is None:
            write_model(dst, reading, file_type)
        else:
            from ..quantization import quantize as quantize_file  # imports the C engine

            # The unquantized model goes next to dst (same file system, and where the user
            # expects disk space to be used), under a name that cannot clash with anything.
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(dst)),
                                       prefix=f".{os.path.basename(dst)}.", suffix=".tmp")
            os.close(fd)
            write_model(tmp, reading, file_type)

            def quantizing(done: int, n: int, name: str) -> None:
                if progress is not None:  # (only passed when it is)
                    progress(n_read + done, n_read + n, name)

            quantize_file(tmp, dst, qtype, quantize_head=quantize_head,
                          progress=quantizing if progress is not None else None)
    except CheckpointError:
        raise  # the reader's messages already name the file
    except ValueError as exc:
        raise _name_the_file(exc, src, dst, tmp) from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    header = fmt.read_header(dst)
    summary = ConvertSummary(
        src=src, dst=dst, shape=shape, type=fmt.type_name(header.data_type),
        n_tensors=n_records, dst_bytes=os.path.getsize(dst), seconds=time.perf_counter() - start,
    )
    if log is not None:
        log(str(summary))
    return summary


# --------------------------------------------------------------------------------------------
# GGUF on either side
# --------------------------------------------------------------------------------------------


def _starts_with(path: str, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


@contextlib.contextmanager
def _scratch_file(dst: str) -> Iterator[str]:
    """A temporary path beside ``dst`` (same file system, where the user expects disk space to
    be used), removed afterwards."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(dst)), prefix=f".{os.path.basename(dst)}.",
                               suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _convert_gguf(src: str, dst: str, file_type: str, qtype: Optional[int], quantize_head: bool,
                  progress: Optional[ProgressFn], log: Optional[LogFn]) -> ConvertSummary:
    """A llama.cpp GGUF file to a .bin, or anything to a GGUF (the destination ends in .gguf):
    a .bin directly, a checkpoint or a quantization through a .bin beside ``dst``
    (:mod:`rwkvcpp.conversion.gguf`). A GGUF keeps its tensors' types; ``dtype`` applies to
    checkpoints only."""
    from ..quantization import quantize as quantize_file  # imports the C engine

    start = time.perf_counter()
    to_gguf = dst.lower().endswith(".gguf")
    if is_gguf(src):
        if to_gguf:
            raise ValueError(f"{src}: already a GGUF file; give a .bin destination")
        if qtype is None:
            result = gguf_to_bin(src, dst, progress, log)
        else:
            with _scratch_file(dst) as tmp:
                result = gguf_to_bin(src, tmp, log=log)
                quantize_file(tmp, dst, qtype, quantize_head=quantize_head, progress=progress)
    else:
        is_model_file = os.path.isfile(src) and _starts_with(src, fmt.MAGIC.to_bytes(4, "little"))
        if is_model_file and qtype is None:
            result = bin_to_gguf(src, dst, progress, log)
        else:
            with _scratch_file(dst) as tmp:
                if is_model_file and qtype is not None:  # (a model file without qtype went to bin_to_gguf)
                    quantize_file(src, tmp, qtype, quantize_head=quantize_head)
                else:
                    convert(src, tmp, file_type, quantize=qtype, quantize_head=quantize_head, log=log)
                result = bin_to_gguf(tmp, dst, progress, name=os.path.splitext(os.path.basename(dst))[0])
    file_kind = "GGUF" if to_gguf else fmt.type_name(fmt.read_header(dst).data_type)
    summary = ConvertSummary(src=src, dst=dst, shape=result.shape, type=file_kind, n_tensors=result.n_tensors,
                             dst_bytes=os.path.getsize(dst), seconds=time.perf_counter() - start)
    if log is not None:
        log(str(summary))
    return summary
