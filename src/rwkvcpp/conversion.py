"""Converting a checkpoint (``.pth``, ``.safetensors``, Hugging Face folder) into an rwkv.cpp model.

``convert(src, dst)`` reads the checkpoint lazily (:func:`rwkvcpp.checkpoints.load_checkpoint`),
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

import math
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Union

from . import format as fmt
from .checkpoints import CheckpointError, LazyCheckpoint, is_hf_layout, load_checkpoint, to_native_names
from .quantization import format_size, quantized_type_id
from .writer import V7_MIX_NAMES, write_model

__all__ = ["convert", "open_checkpoint", "inspect_checkpoint", "ModelShape", "ConvertSummary"]

ProgressFn = Callable[[int, int, str], None]
LogFn = Callable[[str], None]
PathLike = Union[str, os.PathLike]

HEAD_SIZE = fmt.HEAD_SIZE
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

_BLOCK_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")
_NUMBER = re.compile(r"(\d+)")


# --------------------------------------------------------------------------------------------
# What a checkpoint holds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """Architecture and sizes of a checkpoint, found from tensor names and shapes alone."""

    arch: str  # "v4" | "v5.1" | "v5.2" | "v6" | "v7"
    n_vocab: int
    n_embed: int
    n_layer: int
    n_head: int  # 0 for v4, which has no heads
    n_ffn: int
    n_params: int
    dtypes: tuple  # ((dtype name, tensor count), ...) of the data in the file, most common first
    unused: tuple  # names of tensors the engine does not read (copied to the .bin as they are)

    @property
    def dtype(self) -> str:
        """The checkpoint's data type, e.g. "bfloat16", or "float32+bfloat16" for a mix."""
        return "+".join(name for name, _ in self.dtypes)

    def describe(self) -> str:
        heads = f", n_head {self.n_head}" if self.n_head else ""
        return (f"RWKV {self.arch}, n_layer {self.n_layer}, n_embed {self.n_embed}{heads}, "
                f"n_ffn {self.n_ffn}, n_vocab {self.n_vocab}, {format_count(self.n_params)} "
                f"parameters ({self.dtype})")


def format_count(n: int) -> str:
    """1234567 -> "1.23 M"."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _shape_of(checkpoint: Mapping, name: str) -> tuple:
    shape_of = getattr(checkpoint, "shape_of", None)
    return tuple(int(n) for n in (shape_of(name) if shape_of else checkpoint[name].shape))


def _dtype_of(checkpoint: Mapping, name: str) -> str:
    dtype_of = getattr(checkpoint, "dtype_of", None)
    if dtype_of is not None:
        return dtype_of(name)
    return str(getattr(checkpoint[name], "dtype", "?")).replace("torch.", "")


def _compact_ranges(numbers) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    numbers = sorted(numbers)
    parts, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            parts.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(parts)


class _Checker:
    """Checks expected tensors against the checkpoint's shapes, failing with one line that names
    the file. Remembers every name it looked at, so the rest can be reported as unused."""

    def __init__(self, checkpoint: Mapping, where: str, arch: str):
        self.checkpoint = checkpoint
        self.where = where
        self.arch = arch
        self.used: set[str] = set()

    def fail(self, problem: str):
        raise ValueError(f"{self.where}: {problem}")

    def shape(self, name: str) -> tuple:
        if name not in self.checkpoint:
            self.fail(f"tensor {name!r} is missing (every {self.arch} checkpoint has it)")
        self.used.add(name)
        return _shape_of(self.checkpoint, name)

    def vector(self, name: str, *sizes: int) -> int:
        """A vector stored in any shape ((C,), (1, 1, C), (H, 64), ...) with one of ``sizes``
        elements; returns the element count."""
        shape = self.shape(name)
        count = math.prod(shape)
        if count not in sizes:
            wanted = " or ".join(str(s) for s in sizes)
            self.fail(f"tensor {name!r} has shape {shape} ({count} values); expected {wanted} values")
        return count

    def matrix(self, name: str, rows: Optional[int], cols: Optional[int]) -> tuple:
        """A 2-D (rows, cols) tensor; None accepts any size there. Returns the shape."""
        shape = self.shape(name)
        if len(shape) != 2 or (rows is not None and shape[0] != rows) or (cols is not None and shape[1] != cols):
            self.fail(f"tensor {name!r} has shape {shape}; expected "
                      f"({'any' if rows is None else rows}, {'any' if cols is None else cols})")
        return shape

    def norm(self, prefix: str, n: int) -> None:
        self.vector(prefix + ".weight", n)
        self.vector(prefix + ".bias", n)


def _check_attention(c: _Checker, p: str, layer: int, C: int, H: int) -> None:
    """The time-mixing tensors of one layer (``p`` = "blocks.N.att."), in the shapes the
    checkpoint has them (before the writer's transforms)."""
    arch = c.arch
    for m in ("receptance", "key", "value", "output"):
        c.matrix(p + m + ".weight", C, C)
    if arch == "v4":
        for name in ("time_decay", "time_first", "time_mix_k", "time_mix_v", "time_mix_r"):
            c.vector(p + name, C)
    elif arch in ("v5.1", "v5.2"):
        for name in ("time_mix_k", "time_mix_v", "time_mix_r"):
            c.vector(p + name, C)
        # One decay and bonus per head (rwkv.cpp's v5.1 = official 5.0, and the rare official
        # 5.1) or per channel (v5.2); the bonus is time_first in 5.0 files, time_faaaa later.
        c.vector(p + "time_decay", H, C)
        c.vector(p + ("time_faaaa" if p + "time_faaaa" in c.checkpoint else "time_first"), H, C)
        if arch == "v5.2":
            c.vector(p + "time_mix_g", C)
            c.matrix(p + "gate.weight", C, C)
        c.norm(p + "ln_x", C)
    elif arch == "v6":
        for name in ("time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g",
                     "time_decay", "time_faaaa"):
            c.vector(p + name, C)
        _, width5 = c.matrix(p + "time_maa_w1", C, None)
        if width5 % 5:
            c.fail(f"tensor {p + 'time_maa_w1'!r} has {width5} columns; expected a multiple of 5 "
                   "(one low-rank block for each of w, k, v, r, g)")
        w2 = c.shape(p + "time_maa_w2")
        if w2 != (5, width5 // 5, C):
            c.fail(f"tensor {p + 'time_maa_w2'!r} has shape {w2}; expected (5, {width5 // 5}, {C})")
        _, width = c.matrix(p + "time_decay_w1", C, None)
        c.matrix(p + "time_decay_w2", width, C)
        c.matrix(p + "gate.weight", C, C)
        c.norm(p + "ln_x", C)
    else:  # v7
        for name in V7_MIX_NAMES + ("w0", "a0", "k_k", "k_a", "r_k"):
            c.vector(p + name, C)
        # Low-rank pairs: (C, width) down, (width, C) up. Layer 0 makes v_first and has no
        # value-residual pair (v0, v1, v2).
        for down, up in (("w1", "w2"), ("a1", "a2"), ("g1", "g2")) + ((("v1", "v2"),) if layer else ()):
            _, width = c.matrix(p + down, C, None)
            c.matrix(p + up, width, C)
        if layer:
            c.vector(p + "v0", C)
        c.norm(p + "ln_x", C)


def _check_ffn(c: _Checker, p: str, C: int) -> int:
    """The channel-mixing tensors of one layer (``p`` = "blocks.N.ffn."); returns n_ffn."""
    n_ffn, _ = c.matrix(p + "key.weight", None, C)
    c.matrix(p + "value.weight", C, n_ffn)
    if c.arch == "v7":
        c.vector(p + "x_k", C)
        return n_ffn
    mix = "time_maa_" if c.arch == "v6" else "time_mix_"
    c.vector(p + mix + "k", C)
    c.vector(p + mix + "r", C)
    c.matrix(p + "receptance.weight", C, C)
    return n_ffn


def inspect_checkpoint(checkpoint: Mapping, where: str) -> ModelShape:
    """Checks that a checkpoint (native names) is a complete RWKV model of a known architecture,
    from names, shapes and dtypes only, and returns its sizes. Raises ValueError, as one line
    starting with ``where`` (the file name), for the first problem found."""
    names = list(checkpoint)

    def fail(problem: str):
        raise ValueError(f"{where}: {problem}")

    # Integer or bool tensors never belong to a model's weights; refusing them here gives a
    # clear message instead of an error deep in the writer.
    dtypes = Counter()
    for name in names:
        dtype = _dtype_of(checkpoint, name)
        if dtype not in FLOAT_DTYPES:
            fail(f"tensor {name!r} has dtype {dtype}; only floating-point tensors "
                 f"({', '.join(FLOAT_DTYPES)}) can be converted")
        dtypes[dtype] += 1

    if "emb.weight" not in checkpoint:
        sample = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
        fail(f"no 'emb.weight' tensor: not an RWKV checkpoint, or not a complete one (it holds {sample})")
    emb = _shape_of(checkpoint, "emb.weight")
    if len(emb) != 2:
        fail(f"tensor 'emb.weight' has shape {emb}; expected (n_vocab, n_embed)")
    n_vocab, C = emb

    arch = fmt.detect_arch_from_names(names)
    # detect_arch falls back to v4 for anything it does not recognise: make sure it really is v4.
    if arch == "v4" and not all(f"blocks.0.att.{n}" in checkpoint for n in ("time_decay", "time_first", "time_mix_k")):
        att = sorted(n[len("blocks.0.att."):] for n in names if n.startswith("blocks.0.att."))
        found = ", ".join(att[:6]) + (", ..." if len(att) > 6 else "") if att else "none"
        fail(f"unknown architecture: layer 0's attention tensors ({found}) match none of RWKV v4, "
             "v5, v6 or v7")
    H = 0
    if arch != "v4":
        if C % HEAD_SIZE:
            fail(f"n_embed {C} (from 'emb.weight' {emb}) is not a multiple of the head size {HEAD_SIZE} "
                 f"that {arch} uses")
        H = C // HEAD_SIZE

    # Every layer from 0 to the highest one must be there.
    layers = set()
    for name in names:
        match = _BLOCK_NAME.match(name)
        if match:
            layers.add(int(match.group(1)))
    if not layers:
        fail("no layers: the checkpoint has no 'blocks.N.*' tensors")
    n_layer = max(layers) + 1
    missing = sorted(set(range(n_layer)) - layers)
    if missing:
        fail(f"layer {missing[0]} is missing: the checkpoint has tensors of layers {_compact_ranges(layers)}")

    c = _Checker(checkpoint, where, arch)
    c.used.add("emb.weight")
    c.matrix("head.weight", n_vocab, C)
    c.norm("ln_out", C)
    c.norm("blocks.0.ln0", C)
    n_ffn = None
    for i in range(n_layer):
        p = f"blocks.{i}."
        c.norm(p + "ln1", C)
        c.norm(p + "ln2", C)
        _check_attention(c, p + "att.", i, C, H)
        layer_ffn = _check_ffn(c, p + "ffn.", C)
        if n_ffn is None:
            n_ffn = layer_ffn
        elif layer_ffn != n_ffn:  # the engine sizes its buffers once, from layer 0
            fail(f"layer {i} has an FFN of width {layer_ffn} but layer 0 has {n_ffn}; all layers must agree")

    n_params = sum(math.prod(_shape_of(checkpoint, n)) for n in names)
    return ModelShape(
        arch=arch, n_vocab=n_vocab, n_embed=C, n_layer=n_layer, n_head=H, n_ffn=n_ffn, n_params=n_params,
        dtypes=tuple(dtypes.most_common()), unused=tuple(n for n in names if n not in c.used),
    )


# --------------------------------------------------------------------------------------------
# Tensor order
# --------------------------------------------------------------------------------------------

# BlinkDL's releases list each block's tensors in module-registration order: ln1, ln2, (ln0 in
# block 0), the attention's parameters, the FFN's. rwkv.cpp writes records in the order of the
# .pth, so putting safetensors / Hugging Face inputs (whose order was lost) back in this order
# makes their .bin byte-identical to the one converted from the original .pth.
_NORM_ORDER = ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "ln0.weight", "ln0.bias")
_ATT_ORDER = {
    "v4": ("time_decay", "time_first", "time_mix_k", "time_mix_v", "time_mix_r",
           "key.weight", "value.weight", "receptance.weight", "output.weight"),
    "v5": ("time_mix_k", "time_mix_v", "time_mix_r", "time_mix_g", "time_decay", "time_first", "time_faaaa",
           "receptance.weight", "key.weight", "value.weight", "output.weight", "gate.weight",
           "ln_x.weight", "ln_x.bias"),
    "v6": ("time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g",
           "time_maa_w1", "time_maa_w2", "time_decay", "time_decay_w1", "time_decay_w2", "time_faaaa",
           "receptance.weight", "key.weight", "value.weight", "output.weight", "gate.weight",
           "ln_x.weight", "ln_x.bias"),
    "v7": V7_MIX_NAMES + ("w0", "w1", "w2", "a0", "a1", "a2", "v0", "v1", "v2", "g1", "g2", "k_k", "k_a", "r_k",
                          "receptance.weight", "key.weight", "value.weight", "output.weight",
                          "ln_x.weight", "ln_x.bias"),
}
_FFN_ORDER = {
    "v4": ("time_mix_k", "time_mix_r", "key.weight", "receptance.weight", "value.weight"),
    "v6": ("time_maa_k", "time_maa_r", "key.weight", "receptance.weight", "value.weight"),
    "v7": ("x_k", "key.weight", "value.weight"),
}
_TOP_ORDER = {"emb.weight": 0, "ln_out.weight": 2, "ln_out.bias": 3, "head.weight": 4}


def _natural_key(text: str) -> tuple:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in _NUMBER.split(text) if part)


def model_order(names, arch: str) -> list:
    """``names`` sorted into the order of BlinkDL's released checkpoints of ``arch``; names the
    order does not know go after the known ones of their block (or at the end)."""
    family = "v5" if arch.startswith("v5") else arch
    att = {n: i for i, n in enumerate(_ATT_ORDER[family])}
    ffn = {n: i for i, n in enumerate(_FFN_ORDER.get(family, _FFN_ORDER["v4"]))}
    norms = {n: i for i, n in enumerate(_NORM_ORDER)}

    def key(name: str):
        match = _BLOCK_NAME.match(name)
        if match is None:
            return (_TOP_ORDER.get(name, 5), 0, 0, 0, _natural_key(name))
        layer, rest = int(match.group(1)), match.group(2)
        part, _, leaf = rest.partition(".")
        if rest in norms:
            return (1, layer, 0, norms[rest], ())
        table = att if part == "att" else ffn if part == "ffn" else None
        group = 1 if part == "att" else 2 if part == "ffn" else 3
        rank = table.get(leaf, len(table)) if table is not None else 0
        return (1, layer, group, rank, _natural_key(rest))

    return sorted(names, key=key)


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
        order = model_order(checkpoint, shape.arch)
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


class _Reading(Mapping):
    """The checkpoint as ``write_model`` sees it: reports each tensor's first read to
    ``progress`` and answers shape/membership questions without reading data."""

    def __init__(self, checkpoint: LazyCheckpoint, progress: Optional[ProgressFn], total: int):
        self._checkpoint = checkpoint
        self._progress = progress
        self._total = total
        self._seen: set[str] = set()

    def __getitem__(self, name: str):
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

    def __contains__(self, name) -> bool:  # Mapping's default would read the tensor
        return name in self._checkpoint

    def shape_of(self, name: str) -> tuple:
        return self._checkpoint.shape_of(name)


def _file_type(dtype) -> str:
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


def _records_written(checkpoint: Mapping, arch: str) -> int:
    """How many records write_model makes of this checkpoint: one per tensor, except that v7's
    six token-shift mixes of a layer become one."""
    if arch != "v7":
        return len(checkpoint)
    merged = sum(1 for n in checkpoint if n.startswith("blocks.") and n.rsplit(".", 1)[-1] in V7_MIX_NAMES[1:]
                 and ".att." in n)
    return len(checkpoint) - merged


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
    n_records = _records_written(checkpoint, shape.arch)
    total = n_read + (n_records if qtype is not None else 0)
    reading = _Reading(checkpoint, progress, total)
    tmp = None
    try:
        if qtype is None:
            write_model(dst, reading, file_type)
        else:
            from .quantization import quantize as quantize_file  # imports the C engine

            # The unquantized model goes next to dst (same file system, and where the user
            # expects disk space to be used), under a name that cannot clash with anything.
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(dst)),
                                       prefix=f".{os.path.basename(dst)}.", suffix=".tmp")
            os.close(fd)
            write_model(tmp, reading, file_type)

            def quantizing(done: int, n: int, name: str) -> None:
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
