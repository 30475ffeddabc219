"""What an RWKV checkpoint holds, in BlinkDL's names: the check of a whole checkpoint against
its version's tensors (from names, shapes and dtypes alone, no data read) and the one order of
tensors, both built from the version modules of :mod:`rwkvcpp.arch`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn, Optional

from .._typing import Checkpoint
from ..arch import ARCHITECTURES, Architecture, detect
from ..arch.base import head_count
from .hf import hf_to_native_name

__all__ = ["ModelShape", "inspect_checkpoint", "model_order", "shape_of", "format_count", "natural_key"]

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

_BLOCK_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")
_NUMBER = re.compile(r"(\d+)")
_LAYER = re.compile(r"^blocks\.\d+\.")


def shape_of(checkpoint: Checkpoint, name: str) -> tuple[int, ...]:
    """A tensor's shape, without reading its data when the mapping can tell (LazyCheckpoint)."""
    shape_of_ = getattr(checkpoint, "shape_of", None)
    return tuple(int(n) for n in (shape_of_(name) if shape_of_ else checkpoint[name].shape))


def natural_key(text: str) -> tuple[tuple[int, int, str], ...]:
    """'blocks.10' sorts after 'blocks.9'. Pairs keep ints and strings from being compared."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in _NUMBER.split(text) if part)


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
    head_size: int  # n_embed / n_head; 0 for v4
    n_ffn: int
    n_params: int
    dtypes: tuple[tuple[str, int], ...]  # ((dtype name, tensor count), ...) of the data in the file, most common first
    unused: tuple[str, ...]  # names of tensors the engine does not read (copied to the .bin as they are)

    @property
    def dtype(self) -> str:
        """The checkpoint's data type, e.g. "bfloat16", or "float32+bfloat16" for a mix."""
        return "+".join(name for name, _ in self.dtypes)

    def describe(self) -> str:
        heads = f", n_head {self.n_head} (of {self.head_size})" if self.n_head else ""
        return (f"RWKV {self.arch}, n_layer {self.n_layer}, n_embed {self.n_embed}{heads}, "
                f"n_ffn {self.n_ffn}, n_vocab {self.n_vocab}, {format_count(self.n_params)} "
                f"parameters ({self.dtype})")


def format_count(n: int) -> str:
    """1234567 -> "1.23 M"."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _dtype_of(checkpoint: Checkpoint, name: str) -> str:
    dtype_of = getattr(checkpoint, "dtype_of", None)
    if dtype_of is not None:
        return str(dtype_of(name))
    return str(getattr(checkpoint[name], "dtype", "?")).replace("torch.", "")


def _compact_ranges(numbers: Iterable[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    numbers = sorted(numbers)
    parts: list[str] = []
    start: Optional[int] = None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            parts.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(parts)


class _Checker:
    """Checks expected tensors against the checkpoint's shapes, failing with one line that names
    the file. Remembers every name it looked at, so the rest can be reported as unused. The
    version modules' ``check_attention``/``check_ffn`` are written against these methods."""

    def __init__(self, checkpoint: Checkpoint, where: str, arch: str):
        self.checkpoint = checkpoint
        self.where = where
        self.arch = arch
        self.used: set[str] = set()

    def fail(self, problem: str) -> NoReturn:
        raise ValueError(f"{self.where}: {problem}")

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.checkpoint:
            self.fail(f"tensor {name!r} is missing (every {self.arch} checkpoint has it)")
        self.used.add(name)
        return shape_of(self.checkpoint, name)

    def vector(self, name: str, *sizes: int) -> int:
        """A vector stored in any shape ((C,), (1, 1, C), (H, 64), ...) with one of ``sizes``
        elements; returns the element count."""
        shape = self.shape(name)
        count: int = math.prod(shape)
        if count not in sizes:
            wanted = " or ".join(str(s) for s in sizes)
            self.fail(f"tensor {name!r} has shape {shape} ({count} values); expected {wanted} values")
        return count

    def matrix(self, name: str, rows: Optional[int], cols: Optional[int]) -> tuple[int, int]:
        """A 2-D (rows, cols) tensor; None accepts any size there. Returns the shape."""
        shape = self.shape(name)
        if len(shape) != 2 or (rows is not None and shape[0] != rows) or (cols is not None and shape[1] != cols):
            self.fail(f"tensor {name!r} has shape {shape}; expected "
                      f"({'any' if rows is None else rows}, {'any' if cols is None else cols})")
        return shape[0], shape[1]

    def heads(self, arch: Architecture, n_embed: int) -> tuple[int, int]:
        """(n_head, head_size) from layer 0's head tensor; (0, 0) for a version without heads."""
        if not arch.head_tensor:
            return 0, 0
        name = "blocks.0.att." + arch.head_tensor
        try:
            return arch.heads(name, self.shape(name), n_embed)
        except ValueError as exc:
            self.fail(str(exc))

    def same_heads(self, name: str, n_embed: int, n_head: int) -> None:
        """Another layer's head tensor gives layer 0's head count (or none)."""
        shape = self.shape(name)
        count = head_count(shape, n_embed)
        if count and count != n_head:
            self.fail(f"tensor {name!r} has shape {shape}: {count} heads, but layer 0 has {n_head}")

    def norm(self, prefix: str, n: int) -> None:
        self.vector(prefix + ".weight", n)
        self.vector(prefix + ".bias", n)


def inspect_checkpoint(checkpoint: Checkpoint, where: str) -> ModelShape:
    """Checks that a checkpoint (native names) is a complete RWKV model of a known architecture,
    from names, shapes and dtypes only, and returns its sizes. Raises ValueError, as one line
    starting with ``where`` (the file name), for the first problem found."""
    names = list(checkpoint)

    def fail(problem: str) -> NoReturn:
        raise ValueError(f"{where}: {problem}")

    # Integer or bool tensors never belong to a model's weights; refusing them here gives a
    # clear message instead of an error deep in the writer.
    dtypes: Counter[str] = Counter()
    for name in names:
        dtype = _dtype_of(checkpoint, name)
        if dtype not in FLOAT_DTYPES:
            fail(f"tensor {name!r} has dtype {dtype}; only floating-point tensors "
                 f"({', '.join(FLOAT_DTYPES)}) can be converted")
        dtypes[dtype] += 1

    if "emb.weight" not in checkpoint:
        sample = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
        fail(f"no 'emb.weight' tensor: not an RWKV checkpoint, or not a complete one (it holds {sample})")
    emb = shape_of(checkpoint, "emb.weight")
    if len(emb) != 2:
        fail(f"tensor 'emb.weight' has shape {emb}; expected (n_vocab, n_embed)")
    n_vocab, C = emb

    arch = detect(names)
    if arch is None:
        att = sorted(n[len("blocks.0.att."):] for n in names if n.startswith("blocks.0.att."))
        found = ", ".join(att[:6]) + (", ..." if len(att) > 6 else "") if att else "none"
        known = [a.name for a in reversed(ARCHITECTURES)]
        fail(f"unknown architecture: layer 0's attention tensors ({found}) match none of RWKV "
             f"{', '.join(known[:-1])} or {known[-1]}")
    # Every layer from 0 to the highest one must be there.
    layers: set[int] = set()
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

    c = _Checker(checkpoint, where, arch.name)
    c.used.add("emb.weight")
    H, S = c.heads(arch, C)
    c.matrix("head.weight", n_vocab, C)
    c.norm("ln_out", C)
    c.norm("blocks.0.ln0", C)
    n_ffn: Optional[int] = None
    for i in range(n_layer):
        p = f"blocks.{i}."
        c.norm(p + "ln1", C)
        c.norm(p + "ln2", C)
        arch.check_attention(c, p + "att.", i, C, H)
        if i and arch.head_tensor:
            c.same_heads(p + "att." + arch.head_tensor, C, H)
        layer_ffn = arch.check_ffn(c, p + "ffn.", C)
        if n_ffn is None:
            n_ffn = layer_ffn
        elif layer_ffn != n_ffn:  # the engine sizes its buffers once, from layer 0
            fail(f"layer {i} has an FFN of width {layer_ffn} but layer 0 has {n_ffn}; all layers must agree")

    assert n_ffn is not None  # n_layer >= 1: the loop ran
    n_params = sum(math.prod(shape_of(checkpoint, n)) for n in names)
    return ModelShape(
        arch=arch.name, n_vocab=n_vocab, n_embed=C, n_layer=n_layer, n_head=H, head_size=S, n_ffn=n_ffn,
        n_params=n_params,
        dtypes=tuple(dtypes.most_common()), unused=tuple(n for n in names if n not in c.used),
    )


# --------------------------------------------------------------------------------------------
# Tensor order
# --------------------------------------------------------------------------------------------

# BlinkDL's releases list each block's tensors in module-registration order: ln1, ln2, (ln0 in
# block 0), the attention's parameters, the FFN's (each version's order is in its module).
# rwkv.cpp writes records in the order of the .pth, so putting safetensors / Hugging Face inputs
# (whose order was lost) back in this order makes their .bin byte-identical to the one converted
# from the original .pth.
_NORM_ORDER = ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "ln0.weight", "ln0.bias")
_TOP_ORDER = {"emb.weight": 0, "ln_out.weight": 2, "ln_out.bias": 3, "head.weight": 4}


def model_order(names: Iterable[str], arch: Optional[Architecture] = None) -> list[str]:
    """``names`` sorted into the order of BlinkDL's released checkpoints of ``arch`` (by default
    the version the names show). Hugging Face names go where their native names would; names
    the order does not know go after the known ones of their block (or at the end)."""
    native = {name: hf_to_native_name(name) for name in names}
    if arch is None:  # any layer shows the version (a shard may lack layer 0)
        arch = detect(_LAYER.sub("blocks.0.", name) for name in native.values())
    att = {n: i for i, n in enumerate(arch.attention)} if arch else {}
    ffn = {n: i for i, n in enumerate(arch.ffn)} if arch else {}
    norms = {n: i for i, n in enumerate(_NORM_ORDER)}

    def key(name: str) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        name = native[name]
        match = _BLOCK_NAME.match(name)
        if match is None:
            return (_TOP_ORDER.get(name, 5), 0, 0, 0, natural_key(name))
        layer, rest = int(match.group(1)), match.group(2)
        part, _, leaf = rest.partition(".")
        if rest in norms:
            return (1, layer, 0, norms[rest], ())
        table = att if part == "att" else ffn if part == "ffn" else None
        group = 1 if part == "att" else 2 if part == "ffn" else 3
        rank = table.get(leaf, len(table)) if table is not None else 0
        return (1, layer, group, rank, natural_key(rest))

    return sorted(native, key=key)
