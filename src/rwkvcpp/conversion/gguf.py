"""GGUF, llama.cpp's model file, to and from rwkv.cpp ``.bin`` files, for RWKV-6 and RWKV-7.

``gguf_to_bin(src, dst)`` reads the ``rwkv6`` / ``rwkv7`` GGUF files that llama.cpp's
``convert_hf_to_gguf.py`` writes (from Hugging Face ``Rwkv6ForCausalLM`` and fla's
``RWKV7ForCausalLM`` folders) and that ``llama-quantize`` makes of them; ``bin_to_gguf(src, dst)``
writes GGUF files llama.cpp runs. The block formats F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K
and Q5_K are ggml's in both files (docs/FORMAT.md), so block data is copied byte for byte both
ways, and ``.bin -> GGUF -> .bin`` gives back the same file. BF16 tensors are widened to FP32
(exact); the other K-quants (Q6_K, ...) have no ``.bin`` type and are refused.

A reader and writer of our own (:mod:`rwkvcpp.conversion.gguf_file`) rather than the ``gguf``
package: the container is small (a header, typed key/value metadata, tensor infos, aligned
data), and owning it gives what the package does not: every malformed file refused with a
message naming what is wrong and where (the package's reader stops a truncated data section
with a numpy reshape error that names no tensor), output written atomically and streamed tensor
by tensor, and no dependency beyond numpy (the package wants numpy >= 2.2.6, PyYAML, tqdm and
requests). The file is mapped, never read whole.

What llama.cpp does differently from rwkv.cpp's files (from llama.cpp's ``convert_hf_to_gguf``
RWKV classes, ``src/models/rwkv6.cpp``/``rwkv7.cpp`` and gguf-py's tensor names):

* names: ``token_embd``, ``blk.N.attn_norm``, ``time_mix_*``, ``channel_mix_*`` (tables below);
* vectors are stored flat (C), e.g. v7's ``r_k`` as C values instead of (H, S) and v6's
  ``time_decay`` as C values instead of (H, S, 1); matrices keep the ``.bin``'s orientation;
* the token-shift mixes are one ``time_mix_lerp_fused`` tensor: v6's five ``time_maa_w k v r g``
  (in that order) as (5, 1, 1, C); v7's six ``x_r w k v a g`` as (6, 1, 1, C), which is the
  ``.bin``'s ``att.x_rwkvag``;
* v6 Hugging Face models may carry ``rescale_every``: llama.cpp's converter then divides layer
  N's ``time_mix_output`` and ``channel_mix_value`` by 2^(N // rescale_every) and llama.cpp halves
  the residual every that many layers. Reading undoes it by multiplying the values (or the
  blocks' FP16 scales) by that power of two, exactly, except for what the division already lost
  (FP16 values pushed below 2^-14); files written here use no rescaling;
* v7's layer 0 needs ``time_mix_v0/v1/v2``, which RWKV-7 does not use there: llama.cpp's
  converter stores copies of ``a0/a1/a2`` under those names; so does the writer, and the reader
  drops them;
* the vocabulary is in the file (the ``rwkv`` tokenizer: token texts are the token bytes with
  Python's bytes escapes); the ``.bin`` has none, so the writer takes rwkvcpp's World vocabulary
  (n_vocab 65536) or the byte vocabulary (n_vocab 256).

The decay and bonus values are the same in both (llama.cpp computes v6's ``exp(-exp(w))`` and
v7's ``exp(-e^-0.5 sigmoid(w))`` at run time, as the engine does).
"""

from __future__ import annotations

import math
import mmap
import os
from collections import Counter
from typing import Any, Callable, NamedTuple, Optional, Union

import numpy as np

from .. import format as fmt
from .._typing import Array, StrPath
from ..writer import BinWriter
from .gguf_file import (ARRAY, BF16, FLOAT32, GGML_TYPES, INT32, STRING, UINT32, GGUFError, GGUFFile, GGUFTensor,
                        OutTensor, is_gguf, write_gguf)
from .schema import ModelShape, model_order

__all__ = ["gguf_to_bin", "bin_to_gguf", "describe", "is_gguf", "GGUFError", "GGUFSummary"]

ProgressFn = Callable[[int, int, str], None]
LogFn = Callable[[str], None]

# llama.cpp's file types (general.file_type) of the .bin's header types (14 and 16 are Q4_K_S and
# Q5_K_S, "mostly" that type); reading also takes 15 and 17 (Q4_K_M, Q5_K_M) and 32 (BF16).
_FILE_TYPES = {fmt.FP32: 0, fmt.FP16: 1, fmt.Q4_0: 2, fmt.Q4_1: 3, fmt.Q8_0: 7, fmt.Q5_0: 8, fmt.Q5_1: 9,
               fmt.Q4_K: 14, fmt.Q5_K: 16}
_BIN_BY_FILE_TYPE = {**{v: k for k, v in _FILE_TYPES.items()}, 15: fmt.Q4_K, 17: fmt.Q5_K, 32: fmt.FP32}
_GGML_BY_BIN = {t.bin_id: t.id for t in GGML_TYPES.values() if t.bin_id is not None}


# --------------------------------------------------------------------------------------------
# RWKV in GGUF: names and shapes
# --------------------------------------------------------------------------------------------


class Sizes(NamedTuple):
    C: int  # n_embed
    V: int  # n_vocab
    F: int  # FFN width
    H: int  # heads
    S: int  # head size
    ranks: dict[str, int]  # low-rank widths: v6 "mix", "decay"; v7 "w", "a", "v", "g"


class Entry(NamedTuple):
    """One GGUF tensor of a layer (``blk.N.`` + gguf) and the .bin record(s) it holds
    (``blocks.N.`` + native; several for a fused tensor), with the shapes of both."""

    gguf: str
    native: Union[str, tuple[str, ...]]  # a record, or the records a fused tensor concatenates
    gguf_shape: _ShapeOf
    bin_shape: _ShapeOf  # of each record

    @property
    def natives(self) -> tuple[str, ...]:
        return self.native if isinstance(self.native, tuple) else (self.native,)


#: A tensor's shape from the model's sizes.
_ShapeOf = Callable[[Sizes], tuple[int, ...]]
#: (GGUF shape, .bin shape of each record)
_Shapes = tuple[_ShapeOf, _ShapeOf]
#: (GGUF name, .bin name(s), shapes): a row of the tables below.
_Row = tuple[str, Union[str, tuple[str, ...]], _Shapes]


def _same(shape: _ShapeOf) -> _Shapes:
    return shape, shape


def _vector(bin_shape: _ShapeOf = lambda s: (s.C,)) -> _Shapes:
    return (lambda s: (s.C,)), bin_shape


def _entries(rows: list[_Row]) -> list[Entry]:
    return [Entry(gguf, native, *shapes) for gguf, native, shapes in rows]


_C = _vector()
_C11 = _vector(lambda s: (1, 1, s.C))
_SQUARE = _same(lambda s: (s.C, s.C))


def _common(ffn_mix: str, ffn_mix_shapes: _Shapes) -> list[_Row]:
    """The tensors every RWKV layer has in GGUF; the FFN's token-shift mix is named by version."""
    return [
        ("attn_norm.weight", "ln1.weight", _C), ("attn_norm.bias", "ln1.bias", _C),
        ("attn_norm_2.weight", "ln2.weight", _C), ("attn_norm_2.bias", "ln2.bias", _C),
        ("time_mix_receptance.weight", "att.receptance.weight", _SQUARE),
        ("time_mix_key.weight", "att.key.weight", _SQUARE),
        ("time_mix_value.weight", "att.value.weight", _SQUARE),
        ("time_mix_output.weight", "att.output.weight", _SQUARE),
        ("time_mix_ln.weight", "att.ln_x.weight", _C), ("time_mix_ln.bias", "att.ln_x.bias", _C),
        ("channel_mix_lerp_k.weight", ffn_mix, ffn_mix_shapes),
        ("channel_mix_key.weight", "ffn.key.weight", _same(lambda s: (s.F, s.C))),
        ("channel_mix_value.weight", "ffn.value.weight", _same(lambda s: (s.C, s.F))),
    ]


def _lora(name: str, rank: str) -> list[_Row]:
    return [(f"time_mix_{name}1.weight", f"att.{name}1", _same(lambda s: (s.ranks[rank], s.C))),
            (f"time_mix_{name}2.weight", f"att.{name}2", _same(lambda s: (s.C, s.ranks[rank])))]


V6_MIXES = ("time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g")
V6_LAYER = _entries(_common("ffn.time_maa_k", _C) + [
    ("time_mix_lerp_x.weight", "att.time_maa_x", _C),
    ("time_mix_lerp_fused.weight", tuple("att." + m for m in V6_MIXES), ((lambda s: (5, 1, 1, s.C)), lambda s: (s.C,))),
    ("time_mix_w1.weight", "att.time_maa_w1", _same(lambda s: (5 * s.ranks["mix"], s.C))),
    ("time_mix_w2.weight", "att.time_maa_w2", _same(lambda s: (5, s.C, s.ranks["mix"]))),
    ("time_mix_decay.weight", "att.time_decay", _vector(lambda s: (s.H, s.S, 1))),
    ("time_mix_decay_w1.weight", "att.time_decay_w1", _same(lambda s: (s.ranks["decay"], s.C))),
    ("time_mix_decay_w2.weight", "att.time_decay_w2", _same(lambda s: (s.C, s.ranks["decay"]))),
    ("time_mix_first.weight", "att.time_faaaa", ((lambda s: (s.H, s.S)), lambda s: (s.H, s.S, 1))),
    ("time_mix_gate.weight", "att.gate.weight", _SQUARE),
    ("channel_mix_lerp_r.weight", "ffn.time_maa_r", _C),
    ("channel_mix_receptance.weight", "ffn.receptance.weight", _SQUARE),
])
# Older llama.cpp files hold v6's mixes one by one instead of fused.
V6_SEPARATE_MIXES = _entries([(f"time_mix_lerp_{m[-1]}.weight", "att." + m, _C) for m in V6_MIXES])

V7_LAYER = _entries(_common("ffn.x_k", _C11) + [
    ("time_mix_lerp_fused.weight", "att.x_rwkvag", ((lambda s: (6, 1, 1, s.C)), lambda s: (6, 1, s.C))),
    ("time_mix_w0.weight", "att.w0", _C11), *_lora("w", "w"),
    ("time_mix_a0.weight", "att.a0", _C11), *_lora("a", "a"),
    ("time_mix_v0.weight", "att.v0", _C11), *_lora("v", "v"),
    *_lora("g", "g"),
    ("time_mix_k_k.weight", "att.k_k", _C11), ("time_mix_k_a.weight", "att.k_a", _C11),
    ("time_mix_r_k.weight", "att.r_k", _vector(lambda s: (s.H, s.S))),
])
# Layer 0 of v7 has no value residual; llama.cpp wants these names there all the same.
V7_LAYER0_STANDINS = {"time_mix_v0.weight": "time_mix_a0.weight", "time_mix_v1.weight": "time_mix_a1.weight",
                      "time_mix_v2.weight": "time_mix_a2.weight"}

TOP = _entries([
    ("token_embd.weight", "emb.weight", _same(lambda s: (s.V, s.C))),
    ("token_embd_norm.weight", "blocks.0.ln0.weight", _C), ("token_embd_norm.bias", "blocks.0.ln0.bias", _C),
    ("output_norm.weight", "ln_out.weight", _C), ("output_norm.bias", "ln_out.bias", _C),
    ("output.weight", "head.weight", _same(lambda s: (s.V, s.C))),
])

ARCHS = {"rwkv6": ("v6", V6_LAYER), "rwkv7": ("v7", V7_LAYER)}
_OTHER_RWKV = {"rwkv6qwen2": "RWKV6QWEN2 (RWKV-6 attention in a Qwen2 model)",
               "arwkv7": "ARWKV7 (RWKV-7 attention in a Qwen2.5 model)"}
LAYER_NORM_EPS = 1e-5
# Low-rank widths: metadata key -> Sizes.ranks key.
_RANK_KEYS = {"rwkv6": {"time_mix_extra_dim": "mix", "time_decay_extra_dim": "decay"},
              "rwkv7": {"attention.decay_lora_rank": "w", "attention.iclr_lora_rank": "a",
                        "attention.value_residual_mix_lora_rank": "v", "attention.gate_lora_rank": "g"}}


def _trim(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape without leading 1s: GGUF and llama.cpp treat (1, 1, C) and (C,) alike."""
    shape = tuple(shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


# --------------------------------------------------------------------------------------------
# GGUF -> .bin
# --------------------------------------------------------------------------------------------


class GGUFSummary(NamedTuple):
    shape: ModelShape  # of the model; dtypes are the source's tensor types
    n_tensors: int  # written


def _describe_types(counts: Counter[str]) -> tuple[tuple[str, int], ...]:
    """((name, count), ...), the most common first."""
    return tuple(counts.most_common())


#: One GGUF tensor of the plan: (tensor, [(.bin name, .bin shape)], its layer or None).
_Step = tuple[GGUFTensor, list[tuple[str, tuple[int, ...]]], Optional[int]]


class _Reading:
    """A GGUF model's sizes and tensors, checked against what llama.cpp would load."""

    def __init__(self, gguf: GGUFFile):
        self.gguf = gguf
        self.fail = gguf.fail
        meta = gguf.metadata
        name = meta.get("general.architecture")
        if not isinstance(name, str):
            self.fail("no general.architecture in the metadata: not a llama.cpp model file")
        if name not in ARCHS:
            if name in _OTHER_RWKV:
                self.fail(f"a {_OTHER_RWKV[name]}, which rwkvcpp does not run; only rwkv6 and rwkv7 are converted")
            self.fail(f"architecture {name!r} is not RWKV; only llama.cpp's rwkv6 and rwkv7 files are converted")
        self.gguf_arch = name
        self.arch, self.layer_entries = ARCHS[name]
        tensors = gguf.tensors

        C = self.number("embedding_length")
        n_layer = self.number("block_count")
        S = self.number("wkv.head_size")
        if C % S:
            self.fail(f"{name}.embedding_length {C} is not a multiple of {name}.wkv.head_size {S}")
        if "token_embd.weight" not in tensors:
            self.fail("tensor 'token_embd.weight' is missing")
        V = tensors["token_embd.weight"].shape[0]
        ranks = {rank: self.number(key) for key, rank in _RANK_KEYS[name].items()
                 if key != "attention.gate_lora_rank" or f"{name}.{key}" in meta}
        if name == "rwkv7" and "g" not in ranks:  # optional in llama.cpp: then the tensors say
            g1 = tensors.get("blk.0.time_mix_g1.weight")
            ranks["g"] = g1.shape[0] if g1 else 0
        self.sizes = Sizes(C, V, self.number("feed_forward_length"), C // S, S, ranks)
        self.n_layer = n_layer

        eps = meta.get(f"{name}.attention.layer_norm_epsilon", LAYER_NORM_EPS)
        if not math.isclose(eps, LAYER_NORM_EPS, rel_tol=1e-6):
            self.fail(f"{name}.attention.layer_norm_epsilon is {eps}; the engine's layer norms use {LAYER_NORM_EPS:g}")
        if meta.get(f"{name}.token_shift_count", 2) != 2:
            self.fail(f"{name}.token_shift_count is {meta[f'{name}.token_shift_count']}; RWKV shifts two vectors")
        self.rescale_every = int(meta.get(f"{name}.rescale_every_n_layers", 0)) if name == "rwkv6" else 0

    def number(self, key: str) -> int:
        full = f"{self.gguf_arch}.{key}"
        value = self.gguf.metadata.get(full)
        if value is None:
            self.fail(f"metadata {full!r} is missing")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            self.fail(f"metadata {full!r} is {value!r}; expected a positive integer")
        return value

    def plan(self) -> list[_Step]:
        """[(gguf tensor, [(.bin name, .bin shape)], layer)] in the .bin's record order."""
        tensors, sizes = self.gguf.tensors, self.sizes
        used: set[str] = set()
        plan: list[_Step] = []

        def take(gguf_name: str, entry: Entry, layer: Optional[int]) -> None:
            if gguf_name not in tensors:
                self.fail(f"tensor {gguf_name!r} is missing (every {self.gguf_arch} model has it)")
            tensor = tensors[gguf_name]
            expected = entry.gguf_shape(sizes)
            if _trim(tensor.shape) != _trim(expected):
                self.fail(f"tensor {gguf_name!r} has shape {tensor.shape}; expected {expected} (PyTorch order) "
                          f"from the metadata's sizes")
            prefix = "" if layer is None else f"blocks.{layer}."
            plan.append((tensor, [(prefix + n, entry.bin_shape(sizes)) for n in entry.natives], layer))
            used.add(gguf_name)

        for entry in TOP:
            take(entry.gguf, entry, None)
        for i in range(self.n_layer):
            entries = self.layer_entries
            if self.arch == "v6" and f"blk.{i}.time_mix_lerp_fused.weight" not in tensors:
                entries = [e for e in entries if e.gguf != "time_mix_lerp_fused.weight"] + V6_SEPARATE_MIXES
            for entry in entries:
                if i == 0 and entry.gguf in V7_LAYER0_STANDINS and self.arch == "v7":
                    used.add(f"blk.0.{entry.gguf}")  # llama.cpp's stand-ins, not part of the model
                    continue
                take(f"blk.{i}.{entry.gguf}", entry, i)
        unknown = [name for name in tensors if name not in used]
        if unknown:
            self.fail(f"tensor {unknown[0]!r} is not part of an {self.gguf_arch} model as llama.cpp loads it "
                      f"({len(unknown)} such tensors)")

        # The .bin's order: BlinkDL's, with each merged record where its first part stood.
        order = model_order([("blocks.{}.att.x_r".format(layer) if name.endswith(".att.x_rwkvag") else name)
                             for _, records, layer in plan for name, _ in records])
        rank = {name: k for k, name in enumerate(order)}

        def key(item: _Step) -> int:
            name = item[1][0][0]
            return rank[name.replace(".att.x_rwkvag", ".att.x_r")]

        return sorted(plan, key=key)

    def header_type(self) -> int:
        file_type = self.gguf.metadata.get("general.file_type")
        if file_type in _BIN_BY_FILE_TYPE:
            return _BIN_BY_FILE_TYPE[file_type]
        key_type = GGML_TYPES[self.gguf.tensors["blk.0.time_mix_key.weight"].type_id]
        return key_type.bin_id if key_type.bin_id is not None else fmt.FP32


def _bin_type(gguf: GGUFFile, tensor: GGUFTensor) -> int:
    """The .bin type a tensor becomes (BF16 becomes FP32); refuses the others."""
    if tensor.type_id == BF16:
        return fmt.FP32
    ggml = GGML_TYPES[tensor.type_id]
    if ggml.bin_id is not None:
        return ggml.bin_id
    hint = ""
    if ggml.name.endswith("_K"):
        hint = ("; llama-quantize puts the output matrix in Q6_K even in Q4_0-Q5_1 and K files: quantize "
                "with its --pure or --output-tensor-type q8_0, or convert the F16 GGUF and quantize with rwkvcpp")
    gguf.fail(f"tensor {tensor.name!r} is {ggml.name}, which rwkv.cpp model files cannot hold; "
              f"convertible: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K{hint}")


# FP16 fields in each block that scale its values: d, and m (dmin) for the _1 and K types.
_SCALE_FIELDS = {fmt.Q4_0: (0,), fmt.Q4_1: (0, 2), fmt.Q5_0: (0,), fmt.Q5_1: (0, 2), fmt.Q8_0: (0,),
                 fmt.Q4_K: (0, 2), fmt.Q5_K: (0, 2)}


def _scaled(where: str, bin_type: int, data: Array, factor: float) -> Array:
    """Data of a record multiplied by a power of two, exactly: float values, or the FP16 scale
    fields of quantized blocks."""
    with np.errstate(over="ignore"):
        if bin_type in (fmt.FP32, fmt.FP16):
            out = (data.view("<f4" if bin_type == fmt.FP32 else "<f2") * np.float32(factor)).astype(
                "<f4" if bin_type == fmt.FP32 else "<f2")
            finite = np.isfinite(out).all()
        else:
            t = fmt.TYPES[bin_type]
            blocks = data.reshape(-1, t.block_bytes).copy()
            finite = True
            for field in _SCALE_FIELDS[bin_type]:
                column = blocks[:, field:field + 2].copy().view("<f2") * np.float16(factor)
                finite &= bool(np.isfinite(column).all())
                blocks[:, field:field + 2] = column.view(np.uint8)
            out = blocks
    if not finite:
        raise GGUFError(f"{where}: undoing llama.cpp's rescaling overflows")
    return out.reshape(-1).view(np.uint8)


def gguf_to_bin(src: StrPath, dst: StrPath, progress: Optional[ProgressFn] = None,
                log: Optional[LogFn] = None) -> GGUFSummary:
    """Converts a llama.cpp RWKV-6/7 GGUF file into an rwkv.cpp ``.bin`` (atomically)."""
    src, dst = os.fspath(src), os.fspath(dst)
    with GGUFFile(src) as gguf:
        reading = _Reading(gguf)
        plan = reading.plan()
        types = {t.name: _bin_type(gguf, t) for t, _, _ in plan}
        s = reading.sizes
        counts = Counter(t.type_name for t, _, _ in plan)
        shape = ModelShape(arch=reading.arch, n_vocab=s.V, n_embed=s.C, n_layer=reading.n_layer, n_head=s.H,
                           head_size=s.S, n_ffn=s.F, n_params=sum(math.prod(t.shape) for t, _, _ in plan),
                           dtypes=_describe_types(counts), unused=())
        summary = GGUFSummary(shape, sum(len(records) for _, records, _ in plan))
        if log is not None:
            tokenizer = gguf.metadata.get("tokenizer.ggml.model")
            log(f"{src}: GGUF v{gguf.version}, llama.cpp {reading.gguf_arch}: {shape.describe()}"
                + (f"; tokenizer {tokenizer!r}" if tokenizer not in (None, "rwkv") else ""))
            if reading.rescale_every:
                log(f"  undoing llama.cpp's rescaling every {reading.rescale_every} layers")

        done = 0
        with BinWriter(dst, s.V, s.C, reading.n_layer, reading.header_type()) as writer:
            for tensor, records, layer in plan:
                bin_type = types[tensor.name]
                data = np.frombuffer(gguf.data(tensor), np.uint8)
                if tensor.type_id == BF16:  # the upper half of a float32
                    data = (data.view("<u2").astype("<u4") << 16).view(np.uint8)
                rescaled = tensor.name.endswith(("time_mix_output.weight", "channel_mix_value.weight"))
                if reading.rescale_every and rescaled and layer is not None and layer // reading.rescale_every:
                    data = _scaled(f"{src}: tensor {tensor.name!r}", bin_type, data,
                                   2.0 ** (layer // reading.rescale_every))
                part = data.nbytes // len(records)
                for k, (name, bin_shape) in enumerate(records):
                    writer.write_raw(name, bin_type, bin_shape, data[k * part:(k + 1) * part])
                    done += 1
                    if progress is not None:
                        progress(done, summary.n_tensors, name)
    return summary


# --------------------------------------------------------------------------------------------
# .bin -> GGUF
# --------------------------------------------------------------------------------------------

_NORMAL, _CONTROL, _UNUSED = 1, 3, 5  # llama.cpp's token types
_WORLD_MIN_VOCAB = 65530  # the World vocabulary's ids 0..65529
_BYTE_VOCAB = 256


def _vocabulary(n_vocab: int, where: str) -> list[tuple[str, int, Any]]:
    """Tokenizer metadata for llama.cpp's ``rwkv`` tokenizer: the World vocabulary (token 0 the
    end of text, ids past the vocabulary padding), or one token per byte."""
    if n_vocab == _BYTE_VOCAB:
        texts = [repr(bytes([b]))[2:-1] for b in range(_BYTE_VOCAB)]
        types = [_NORMAL] * _BYTE_VOCAB
        special: list[tuple[str, int, Any]] = [("tokenizer.ggml.bos_token_id", UINT32, 0),
                                               ("tokenizer.ggml.eos_token_id", UINT32, 0)]
    elif n_vocab >= _WORLD_MIN_VOCAB:
        from ..tokenizer.world import WorldTokenizer

        world = WorldTokenizer(n_vocab=n_vocab)
        texts, types = ["<s>"], [_CONTROL]
        for token_id in range(1, n_vocab):
            raw = world.token_bytes(token_id)
            # Python's bytes escapes (\\, \', \t, \n, \r, \xhh) are what llama.cpp unescapes.
            texts.append(repr(raw)[2:-1] if raw else f"[PAD{token_id}]")
            types.append(_NORMAL if raw else _UNUSED)
        special = [("tokenizer.ggml.bos_token_id", UINT32, 0), ("tokenizer.ggml.eos_token_id", UINT32, 0),
                   ("tokenizer.ggml.eot_token_id", UINT32, world.encode("\n\n")[0]),
                   ("tokenizer.chat_template", STRING, "rwkv-world")]
    else:
        raise GGUFError(f"{where}: n_vocab {n_vocab} fits neither the RWKV World vocabulary (65536) nor the "
                        "byte vocabulary (256); a GGUF file must carry its vocabulary, and rwkvcpp has no other")
    return [("tokenizer.ggml.model", STRING, "rwkv"), ("tokenizer.ggml.tokens", ARRAY, (STRING, texts)),
            ("tokenizer.ggml.token_type", ARRAY, (INT32, types))] + special


def _bin_sizes(records: dict[str, fmt.Record], header: fmt.Header, arch: str, where: str) -> Sizes:
    def rows(name: str) -> int:
        if name not in records:
            raise GGUFError(f"{where}: tensor {name!r} is missing")
        return records[name].shape[0]

    C = header.n_embed
    if arch == "v6":
        first = records.get("blocks.0.att.time_faaaa")
        S = first.shape[1] if first is not None and len(first.shape) >= 2 else 64
        ranks = {"mix": rows("blocks.0.att.time_maa_w1") // 5, "decay": rows("blocks.0.att.time_decay_w1")}
    else:
        r_k = records.get("blocks.0.att.r_k")
        S = r_k.shape[-1] if r_k is not None and len(r_k.shape) == 2 else 64
        value_layer = "blocks.1.att.v1" if "blocks.1.att.v1" in records else "blocks.0.att.a1"
        ranks = {"w": rows("blocks.0.att.w1"), "a": rows("blocks.0.att.a1"), "v": rows(value_layer),
                 "g": rows("blocks.0.att.g1")}
    if C % S:
        raise GGUFError(f"{where}: n_embed {C} is not a multiple of the head size {S}")
    return Sizes(C, header.n_vocab, rows("blocks.0.ffn.key.weight"), C // S, S, ranks)


def _tensor_data(source: mmap.mmap, records: list[fmt.Record], bin_type: int,
                 transpose: bool) -> Callable[[], Array]:
    """The bytes of a GGUF tensor made of these records: one record as it is (or transposed),
    or several one after the other (v6's fused mixes; widened to FP32 if they mix FP32 and FP16)."""
    def data() -> Array:
        if len(records) == 1 and not transpose:
            return np.frombuffer(source, np.uint8, records[0].nbytes, records[0].offset)
        parts = []
        for record in records:
            values = np.asarray(fmt.read_tensor(source, record))
            if transpose:
                values = np.ascontiguousarray(values.T)
            if record.type_id != bin_type:
                values = values.astype("<f4")
            parts.append(values.reshape(-1).view(np.uint8))
        return np.concatenate(parts)
    return data


class _Writing:
    """The GGUF tensors of a .bin model, checked against the shapes llama.cpp loads."""

    def __init__(self, src: str, records: dict[str, fmt.Record], sizes: Sizes, arch: str, source: mmap.mmap):
        self.src, self.records, self.sizes, self.arch, self.source = src, records, sizes, arch, source
        self.tensors: list[OutTensor] = []
        self.used: set[str] = set()

    def record(self, name: str, entry: Entry) -> tuple[fmt.Record, bool]:
        """(record, whether it must be transposed)."""
        if name not in self.records:
            raise GGUFError(f"{self.src}: tensor {name!r} is missing (every {self.arch} model has it)")
        record, expected = self.records[name], entry.bin_shape(self.sizes)
        self.used.add(name)
        if _trim(record.shape) == _trim(expected):
            return record, False
        # Some converters left v6's time_decay_w2 untransposed, which the engine accepts too.
        if name.endswith(".time_decay_w2") and record.shape == expected[::-1]:
            if record.type_id not in (fmt.FP32, fmt.FP16):
                raise GGUFError(f"{self.src}: tensor {name!r} is stored untransposed {record.shape} in "
                                f"{record.type_name}; llama.cpp needs it transposed, which only an FP32 or FP16 "
                                "tensor can be")
            return record, True
        raise GGUFError(f"{self.src}: tensor {name!r} has shape {record.shape}; expected {expected}")

    def add(self, gguf_name: str, entry: Entry, names: tuple[str, ...]) -> None:
        found = [self.record(name, entry) for name in names]
        records = [record for record, _ in found]
        kinds = {record.type_id for record in records}
        if len(kinds) > 1 and not kinds <= {fmt.FP32, fmt.FP16}:
            raise GGUFError(f"{self.src}: tensors {', '.join(r.name for r in records)} have different types; "
                            f"llama.cpp stores them as one tensor {gguf_name!r}")
        bin_type = kinds.pop() if len(kinds) == 1 else fmt.FP32
        data = _tensor_data(self.source, records, bin_type, transpose=found[0][1])
        self.tensors.append(OutTensor(gguf_name, _GGML_BY_BIN[bin_type], entry.gguf_shape(self.sizes), data))

    def add_model(self, n_layer: int, layer_entries: list[Entry]) -> None:
        for entry in TOP:
            self.add(entry.gguf, entry, entry.natives)
        by_gguf = {entry.gguf: entry for entry in layer_entries}
        for i in range(n_layer):
            for entry in layer_entries:
                natives = entry.natives
                if i == 0 and self.arch == "v7" and entry.gguf in V7_LAYER0_STANDINS:
                    stand_in = by_gguf[V7_LAYER0_STANDINS[entry.gguf]]
                    self.add(f"blk.0.{entry.gguf}", stand_in, (f"blocks.0.{stand_in.native}",))
                    # a layer-0 value residual pair, if the file has one, is never used
                    self.used.update(f"blocks.0.{n}" for n in natives)
                    continue
                self.add(f"blk.{i}.{entry.gguf}", entry, tuple(f"blocks.{i}.{n}" for n in natives))


def _metadata(gguf_arch: str, header: fmt.Header, sizes: Sizes, name: str,
              where: str) -> list[tuple[str, int, Any]]:
    metadata: list[tuple[str, int, Any]] = [
        ("general.architecture", STRING, gguf_arch),
        ("general.name", STRING, name),
        ("general.file_type", UINT32, _FILE_TYPES[header.data_type]),
        ("general.quantization_version", UINT32, 2),
        (f"{gguf_arch}.context_length", UINT32, 1 << 20),  # RWKV has no context limit
        (f"{gguf_arch}.embedding_length", UINT32, sizes.C),
        (f"{gguf_arch}.block_count", UINT32, header.n_layer),
        (f"{gguf_arch}.feed_forward_length", UINT32, sizes.F),
        (f"{gguf_arch}.attention.head_count", UINT32, 0),  # required by llama.cpp, unused
        (f"{gguf_arch}.attention.layer_norm_epsilon", FLOAT32, LAYER_NORM_EPS),
        (f"{gguf_arch}.wkv.head_size", UINT32, sizes.S),
    ]
    metadata += [(f"{gguf_arch}.{key}", UINT32, sizes.ranks[rank]) for key, rank in _RANK_KEYS[gguf_arch].items()]
    return metadata + _vocabulary(header.n_vocab, where)


def bin_to_gguf(src: StrPath, dst: StrPath, progress: Optional[ProgressFn] = None, log: Optional[LogFn] = None,
                name: Optional[str] = None) -> GGUFSummary:
    """Converts an rwkv.cpp RWKV-6/7 ``.bin`` into a GGUF file llama.cpp runs (atomically);
    ``name`` is the model's name in it (general.name; by default the file's)."""
    from ..arch import detect

    src, dst = os.fspath(src), os.fspath(dst)
    header = fmt.read_header(src)
    records = {r.name: r for r in fmt.iter_records(src)}
    arch = detect(records)
    gguf_arch = {"v6": "rwkv6", "v7": "rwkv7"}.get(arch.name) if arch else None
    if arch is None or gguf_arch is None:
        raise GGUFError(f"{src}: an RWKV {arch.name if arch else '(unknown)'} model; llama.cpp runs RWKV-6 and "
                        "RWKV-7 only, so only those become GGUF files")
    sizes = _bin_sizes(records, header, arch.name, src)
    metadata = _metadata(gguf_arch, header, sizes, name or os.path.splitext(os.path.basename(src))[0], src)
    source = fmt.open_mmap(src)
    try:
        writing = _Writing(src, records, sizes, arch.name, source)
        writing.add_model(header.n_layer, ARCHS[gguf_arch][1])
        left = tuple(name for name in records if name not in writing.used)
        shape = ModelShape(arch=arch.name, n_vocab=sizes.V, n_embed=sizes.C, n_layer=header.n_layer, n_head=sizes.H,
                           head_size=sizes.S, n_ffn=sizes.F, n_params=sum(math.prod(r.shape) for r in records.values()),
                           dtypes=_describe_types(Counter(r.type_name for r in records.values())), unused=left)
        if log is not None:
            counts = Counter(GGML_TYPES[t.type_id].name for t in writing.tensors)
            log(f"{src}: {shape.describe()} -> llama.cpp {gguf_arch}, "
                + ", ".join(f"{n} {type_name}" for type_name, n in _describe_types(counts)))
            if left:
                log(f"  not carried into the GGUF (llama.cpp has no place for them): {', '.join(left)}")
        write_gguf(dst, metadata, writing.tensors, progress)
    finally:
        try:
            source.close()
        except BufferError:  # an error left views of it alive; the map goes with them
            pass
    return GGUFSummary(shape, len(writing.tensors))


def describe(path: StrPath) -> dict[str, Any]:
    """Metadata and tensors of a GGUF file (for ``rwkvcpp info``); long arrays are summarized."""
    with GGUFFile(path) as gguf:
        metadata: dict[str, Any] = {}
        for key, value in gguf.metadata.items():
            if gguf.value_types[key] == FLOAT32:
                value = float(f"{value:.7g}")  # the float32's shortest form
            elif isinstance(value, np.ndarray):
                value = value.tolist() if len(value) <= 8 else f"[{len(value)} {value.dtype.name} values]"
            elif isinstance(value, list) and len(value) > 8:
                value = f"[{len(value)} strings]"
            metadata[key] = value
        tensors: list[dict[str, Any]] = [
            {"name": t.name, "type": t.type_name, "shape": list(t.shape), "bytes": t.nbytes}
            for t in gguf.tensors.values()]
        name = gguf.metadata.get("general.architecture")
        meta = gguf.metadata
        embedding = gguf.tensors.get("token_embd.weight")
        return {"path": os.fspath(path), "kind": "GGUF model", "version": gguf.version, "gguf_arch": name,
                "arch": ARCHS[name][0] if name in ARCHS else None,
                "n_vocab": embedding.shape[0] if embedding else None,
                "n_embed": meta.get(f"{name}.embedding_length"), "n_layer": meta.get(f"{name}.block_count"),
                "n_ffn": meta.get(f"{name}.feed_forward_length"), "metadata": metadata,
                "n_params": sum(math.prod(t["shape"]) for t in tensors), "file_size": gguf.size,
                "type_counts": dict(Counter(t["type"] for t in tensors).most_common()), "tensors": tensors}
