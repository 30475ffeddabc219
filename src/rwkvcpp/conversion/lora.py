"""Merging a LoRA into an FP32/FP16 rwkv.cpp model: ``merge_lora(src, lora, dst, alpha)``.

The LoRA is a checkpoint in the layout of RWKV-LM-LoRA (Blealtan) and RWKV-PEFT, which rwkv.cpp's
``python/merge_lora_into_ggml.py`` reads: for a Linear weight ``blocks.0.att.key.weight`` of
shape (out, in), ``blocks.0.att.key.lora_A`` (r, in) and ``blocks.0.att.key.lora_B`` (out, r)
(or ``.lora_A.weight``/``.lora_B.weight``); the merged weight is W + B @ A * alpha / r. Other
tensors in the file (trained ``time_*`` or norms) replace the model's, after the conversion's
transforms (v4's -exp(decay), v5's exp(-exp(decay)), transpositions, v7's mixes going into
``x_rwkvag``). RWKV-7, which rwkv.cpp's script lacks, uses the same names on its Linear layers
(``att.receptance/key/value/output``, ``ffn.key/value``); its ``x_*``, ``w0`` ... tensors
replace the model's as their conversion makes them.

The arithmetic is rwkv.cpp's in torch, rounding where it rounds: B @ A is stored in the LoRA's own
type (bf16, fp16 or fp32), scaled in float32 and stored again in that type, added to the weight in
float32, and an FP16 tensor is rounded to FP16 (to nearest even).
Quantized models are refused, as rwkv.cpp refuses them: merge into the FP16/FP32 file, then
quantize. The result is written to a temporary file and renamed at the end; its header says file
version 101 (an old version-100 FP32/FP16 file's tensors are laid out the same).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .. import format as fmt
from .._typing import Array, StrPath
from ..arch import Architecture, detect
from ..arch import get as get_arch
from ..quantization import _check_paths
from ..writer import BinWriter
from .lazy import LazyCheckpoint
from .load import load_checkpoint
from .schema import FLOAT_DTYPES
from .transform import as_float32

__all__ = ["merge_lora", "MergeSummary", "ARCH_NAMES"]

#: The version names merge_lora accepts: rwkvcpp's and rwkv.cpp's script's ("v6.0").
ARCH_NAMES = {"v4": "v4", "v5.1": "v5.1", "v5.2": "v5.2", "v6": "v6", "v6.0": "v6", "v7": "v7", "v7.0": "v7"}

_ATT_NAME = re.compile(r"^blocks\.(\d+)\.att\.(.+)$")
ProgressFn = Callable[[int, int, str], None]
PathLike = StrPath
#: (lora_A name, lora_B name)
_Pair = tuple[str, str]
#: (LoRA tensor name, the row of a merged record it replaces or None for the whole record)
_Replacement = tuple[str, Optional[int]]


@dataclass(frozen=True)
class MergeSummary:
    """What ``merge_lora`` did."""

    src: str
    dst: str
    lora: str
    arch: str
    merged: tuple[str, ...]  # records that got a LoRA pair added
    replaced: tuple[str, ...]  # records (or v7 mixes) the LoRA file replaced
    unused: tuple[str, ...]  # LoRA tensors that matched nothing in the model
    seconds: float

    def __str__(self) -> str:
        return (f"{self.dst}: {len(self.merged)} LoRA pairs merged, {len(self.replaced)} tensors replaced, "
                f"{len(self.unused)} LoRA tensors unused, in {self.seconds:.1f} s")


# --------------------------------------------------------------------------------------------
# Rounding as torch does
# --------------------------------------------------------------------------------------------


def _round_to(array: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values rounded (to nearest even) to ``dtype``'s precision, kept as float32."""
    if dtype == "float16":
        return array.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32).astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return rounded.astype(np.uint32).view(np.float32).reshape(array.shape)
    return array


def _lora_delta(a: np.ndarray, b: np.ndarray, dtype: str, scale: float) -> np.ndarray:
    """B @ A * scale as torch computes it on tensors of type ``dtype``: the product rounded to
    that type, then scaled by the float32 factor and rounded again. The product is taken in
    float64 (rows at a time, to bound memory), so it is the same on every machine; torch sums in
    float32 in its BLAS's order, which can leave a value that lies within an ulp of a rounding
    boundary one ulp apart."""
    a64 = a.astype(np.float64)
    out = np.empty((b.shape[0], a.shape[1]), np.float32)
    rows = max(1, (1 << 24) // max(1, a.shape[1]))
    for start in range(0, b.shape[0], rows):
        product = b[start:start + rows].astype(np.float64) @ a64
        if dtype == "float64":
            out[start:start + rows] = product * scale
        else:
            out[start:start + rows] = _round_to(_round_to(product.astype(np.float32), dtype) * np.float32(scale), dtype)
    return out


# --------------------------------------------------------------------------------------------
# Planning: which record gets what
# --------------------------------------------------------------------------------------------


def _pair_names(record: str, lora: LazyCheckpoint) -> Optional[_Pair]:
    """The (lora_A, lora_B) names for a record, as rwkv.cpp's script looks them up."""
    base = record.replace(".weight", "")
    for suffix in (".weight", ""):
        a, b = f"{base}.lora_A{suffix}", f"{base}.lora_B{suffix}"
        if a in lora:
            return a, b
    return None


def _replacements(record: str, arch: Architecture, lora: LazyCheckpoint) -> list[_Replacement]:
    """[(LoRA name, slot)] replacing a record: slot None for the whole record, i for row i of a
    merged record (v7's x_rwkvag)."""
    if record in lora:
        return [(record, None)]
    match = _ATT_NAME.match(record)
    if match and match.group(2) in arch.merged:
        prefix = f"blocks.{match.group(1)}.att."
        return [(prefix + source, i) for i, source in enumerate(arch.merged[match.group(2)])
                if prefix + source in lora]
    return []


def _as_record(name: str, value: np.ndarray, arch: Architecture, n_head: int) -> np.ndarray:
    """A checkpoint tensor as the file stores it (transform_checkpoint's steps for one tensor)."""
    if ".time_" in name:
        value = np.squeeze(value)
    match = _ATT_NAME.match(name)
    if match:
        value = arch.transform(match.group(2), value, n_head, name)
    return np.ascontiguousarray(value, dtype=np.float32)


def _check_pair(record: fmt.Record, a: str, b: str, lora: LazyCheckpoint, where: str) -> None:
    if b not in lora:
        raise ValueError(f"{where}: has {a!r} but not {b!r}")
    shape_a, shape_b = tuple(lora.shape_of(a)), tuple(lora.shape_of(b))
    if len(shape_a) != 2 or len(shape_b) != 2 or shape_b[1] != shape_a[0]:
        raise ValueError(f"{where}: LoRA matrices for {record.name!r} have shapes {shape_a} and {shape_b}; "
                         "expected A (r, in) and B (out, r)")
    if (shape_b[0], shape_a[1]) != record.shape:
        raise ValueError(f"{where}: LoRA B @ A for {record.name!r} is {(shape_b[0], shape_a[1])}; the model's "
                         f"tensor is {record.shape}")
    if shape_a[0] == 0:
        raise ValueError(f"{where}: LoRA matrices for {record.name!r} have rank 0")
    dtypes = {lora.dtype_of(a), lora.dtype_of(b)}
    if len(dtypes) != 1 or not dtypes <= set(FLOAT_DTYPES):
        raise ValueError(f"{where}: LoRA matrices for {record.name!r} are {' and '.join(sorted(dtypes))}; "
                         "expected one floating-point type for both")


def _model_arch(src: str, records: list[fmt.Record], arch: Optional[str]) -> Architecture:
    found = detect(r.name for r in records)
    if found is None:
        raise ValueError(f"{src}: its tensors match no RWKV version")
    if arch is not None:
        key = str(arch).strip().lower()
        if key not in ARCH_NAMES:
            raise ValueError(f"unknown RWKV version {arch!r}; expected one of {', '.join(ARCH_NAMES)}")
        if get_arch(ARCH_NAMES[key]) is not found:
            raise ValueError(f"{src}: an RWKV {found.name} model, not {arch}")
    return found


# --------------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------------


def merge_lora(src: PathLike, lora: PathLike, dst: PathLike, alpha: float, arch: Optional[str] = None,
               progress: Optional[ProgressFn] = None) -> MergeSummary:
    """Merges the LoRA checkpoint ``lora`` (.pth or .safetensors) trained with ``alpha`` into the
    FP32/FP16 model ``src``, writing ``dst`` (same tensors, names and types).

    ``arch`` ("v4", "v5.1", "v5.2", "v6"/"v6.0", "v7"), when given, must be the model's version
    (it is read from the file anyway). ``progress(done, total, name)`` is called after each
    record. Raises ValueError for a quantized or malformed model, a LoRA whose tensors do not
    fit it, or a bad argument (naming the file and tensor), OSError for unreadable files; ``dst``
    is then left as it was.
    """
    src, lora_path, dst = os.fspath(src), os.fspath(lora), os.fspath(dst)
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"lora_alpha must be a number, not {alpha!r}") from None
    if not np.isfinite(alpha):
        raise ValueError(f"lora_alpha must be finite, not {alpha}")
    for path in (src, lora_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file or directory")
    _check_paths(src, dst)
    if os.path.exists(dst) and os.path.samefile(lora_path, dst):
        raise ValueError(f"{dst}: the destination is the LoRA file; write the model to another path")

    start = time.perf_counter()
    header = fmt.read_header(src)
    records = fmt.load_records(src)
    quantized = [("the file's type", header.data_type)] + [(f"tensor {r.name!r}", r.type_id) for r in records]
    for what, tid in quantized:
        if tid not in (fmt.FP32, fmt.FP16):
            raise ValueError(f"{src}: {what} is {fmt.type_name(tid)}; only FP32 and FP16 models take a LoRA "
                             "(merge into the FP16/FP32 file, then quantize the result)")
    model_arch = _model_arch(src, records, arch)
    try:  # the model's own head count (not every model has heads of 64), as the engine reads it
        n_head, _ = model_arch.file_heads({r.name: r.shape for r in records}, header.n_embed)
    except ValueError as exc:
        raise ValueError(f"{src}: {exc}") from None
    checkpoint = load_checkpoint(lora_path)
    where = os.path.basename(lora_path)

    # Everything is checked from shapes before anything is written.
    plan = []
    used: set[str] = set()
    for record in records:
        pair = _pair_names(record.name, checkpoint)
        if pair is not None:
            _check_pair(record, *pair, checkpoint, where)
            used.update(pair)
        replacing = _replacements(record.name, model_arch, checkpoint)
        used.update(name for name, _ in replacing)
        plan.append((record, replacing, pair))
    unused = tuple(name for name in checkpoint if name not in used)

    merged, replaced = [], []
    with BinWriter(dst, header.n_vocab, header.n_embed, header.n_layer, header.data_type) as writer:
        for done, (record, replacing, pair) in enumerate(plan, 1):
            value = fmt.read_tensor_f32(src, record)
            if replacing or pair:
                value = _merged_record(record, value, replacing, pair, checkpoint, model_arch,
                                       n_head, alpha, where)
            if replacing:
                replaced.append(record.name)
            if pair:
                merged.append(record.name)
            writer.write_tensor(record.name, value, record.type_id)
            if progress is not None:
                progress(done, len(plan), record.name)
    return MergeSummary(src=src, dst=dst, lora=lora_path, arch=model_arch.name, merged=tuple(merged),
                        replaced=tuple(replaced), unused=unused, seconds=time.perf_counter() - start)


def _merged_record(record: fmt.Record, value: Array, replacing: list[_Replacement], pair: Optional[_Pair],
                   checkpoint: LazyCheckpoint, arch: Architecture, n_head: int, alpha: float,
                   where: str) -> Array:
    """One record with its replacements, then its LoRA pair, applied; rounded to FP16 after each
    step when the record is FP16 (as rwkv.cpp's script does)."""
    fp16 = record.type_id == fmt.FP16
    value = np.array(value, dtype=np.float32)  # a writable copy
    for name, slot in replacing:
        new = _as_record(name, as_float32(name, checkpoint[name]), arch, n_head)
        target = value if slot is None else value[slot]
        if new.size != target.size or (slot is None and new.shape != target.shape):
            raise ValueError(f"{where}: tensor {name!r} becomes {new.shape} in the model file, where "
                             f"{record.name!r} holds {target.shape}")
        target[...] = new.reshape(target.shape)
    if replacing and fp16:
        value = _round_to(value, "float16")
    if pair is not None:
        a, b = pair
        scale = alpha / checkpoint.shape_of(a)[0]
        delta = _lora_delta(checkpoint[a], checkpoint[b], checkpoint.dtype_of(a), scale)
        value = value + delta
        if fp16:
            value = _round_to(value, "float16")
    return value
