"""flash-linear-attention's RWKV-7 layout back to BlinkDL's names and shapes.

fla (github.com/fla-org/flash-linear-attention, ``fla/models/rwkv7``, ``fla/layers/rwkv7.py``)
ports RWKV-7 to Hugging Face as ``RWKV7ForCausalLM``; the ``fla-hub/rwkv7-*`` and
``RWKV/RWKV7-Goose-*-HF`` repositories hold BlinkDL's released weights in its layout, made by
fla's ``utils/convert_from_rwkv7.py``. The math is BlinkDL's; the weights are regrouped:

=========================================  ==========================================  ==============
fla (``model.layers.N.`` ...)              native (``blocks.N.`` ...)                  how
=========================================  ==========================================  ==============
``model.embeddings.weight``                ``emb.weight``
``pre_norm``, ``attn_norm``, ``ffn_norm``  ``ln0`` (layer 0), ``ln1``, ``ln2``
``attn.x_r`` ... ``attn.x_g``              ``att.x_r`` ... ``att.x_g``                 (1, 1, C)
``attn.x_x`` (6, C), fla before 2025-04    ``att.x_r`` ... ``att.x_g``                 one row each
``attn.k_k``, ``attn.k_a`` (C)             ``att.k_k``, ``att.k_a``                    (1, 1, C)
``attn.r_k`` (H, S)                        ``att.r_k``
``attn.{r,k,v,o}_proj.weight``             ``att.{receptance,key,value,output}.weight``
``attn.X_lora.lora.0.weight`` (D, C)       ``att.X1`` (C, D)                           transposed
``attn.X_lora.lora.2.weight`` (C, D)       ``att.X2`` (D, C)                           transposed
``attn.X_lora.lora.2.bias`` (C)            ``att.X0`` (1, 1, C)                        X = w, a, v
``attn.g_norm.*`` (a GroupNorm)            ``att.ln_x.*``
``ffn.x_k`` (C), ``ffn.key/value.weight``  ``ffn.x_k`` (1, 1, C), the same
``model.norm.*``, ``lm_head.weight``       ``ln_out.*``, ``head.weight``
=========================================  ==========================================  ==============

Each low-rank pair is an ``nn.Sequential(Linear(C, D, bias=False), activation, Linear(D, C))``:
``Linear(x) = x @ weight.T + bias``, so ``tanh(x @ w1) @ w2 + w0`` is that module with tanh
(w), no activation (a, v) or sigmoid and no bias (g: ``sigmoid(x @ g1) @ g2``). Layer 0 has no
value-residual pair (it makes ``v_first``); a native checkpoint may carry an unused one there.

Tensors are re-laid out lazily: nothing is read until the converter asks for it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Callable, NoReturn, Optional, Union

import numpy as np

from .._typing import Array, Checkpoint
from .lazy import CheckpointError, LazyCheckpoint, TensorSource

#: How a tensor is re-laid out: _SAME, _TRANSPOSED, _CHANNELS, or a row of the fused mixes.
_How = Union[str, int]
_Relayout = Callable[[Array], Array]

__all__ = ["is_fla_layout", "fla_to_native", "check_fla_config"]

_MIXES = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")

# How a native tensor is made from its fla source.
_SAME = "same"
_TRANSPOSED = "transposed"
_CHANNELS = "channels"  # a per-channel vector as (1, 1, C)


def _attention_table() -> dict[str, tuple[str, _How]]:
    table: dict[str, tuple[str, _How]] = {
        "r_proj.weight": ("receptance.weight", _SAME),
        "k_proj.weight": ("key.weight", _SAME),
        "v_proj.weight": ("value.weight", _SAME),
        "o_proj.weight": ("output.weight", _SAME),
        "g_norm.weight": ("ln_x.weight", _SAME),
        "g_norm.bias": ("ln_x.bias", _SAME),
        "r_k": ("r_k", _SAME),
        "k_k": ("k_k", _CHANNELS),
        "k_a": ("k_a", _CHANNELS),
    }
    table.update({mix: (mix, _CHANNELS) for mix in _MIXES})
    for pair in "wavg":
        table[f"{pair}_lora.lora.0.weight"] = (f"{pair}1", _TRANSPOSED)
        table[f"{pair}_lora.lora.2.weight"] = (f"{pair}2", _TRANSPOSED)
        if pair != "g":  # the gate's second Linear has no bias
            table[f"{pair}_lora.lora.2.bias"] = (f"{pair}0", _CHANNELS)
    return table


_ATTENTION = _attention_table()
_FFN = {"x_k": ("x_k", _CHANNELS), "key.weight": ("key.weight", _SAME), "value.weight": ("value.weight", _SAME)}
_NORMS = {"pre_norm": "ln0", "attn_norm": "ln1", "ffn_norm": "ln2"}
_TOP = {"model.embeddings.weight": "emb.weight", "model.norm.weight": "ln_out.weight",
        "model.norm.bias": "ln_out.bias", "lm_head.weight": "head.weight"}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")


def is_fla_layout(names: Iterable[str]) -> bool:
    """Whether these tensor names are fla's RWKV-7 layout (``model.layers.N.*``)."""
    return any(name.startswith("model.layers.") or name == "model.embeddings.weight" for name in names)


# --------------------------------------------------------------------------------------------
# Lazy re-layout
# --------------------------------------------------------------------------------------------


class _Relaid:
    """A tensor read from its source only when asked, then re-laid out (transposed, reshaped,
    one row taken). Has what the converter uses of a LazyTensor: shape, dtype, numpy()."""

    __slots__ = ("_read", "_relayout", "shape", "dtype")

    def __init__(self, read: Callable[[], Array], relayout: _Relayout, shape: tuple[int, ...], dtype: str):
        self._read, self._relayout, self.shape, self.dtype = read, relayout, shape, dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        count: int = math.prod(self.shape)
        return count

    def numpy(self) -> Array:
        return np.ascontiguousarray(self._relayout(self._read()))

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> Array:
        array = self.numpy()
        return array if dtype is None else array.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"_Relaid(shape={self.shape}, dtype={self.dtype})"


def _relayout(how: _How, source_name: str, shape: tuple[int, ...]) -> tuple[_Relayout, tuple[int, ...]]:
    """(function on the source array, the result's shape); CheckpointError when the source's
    shape does not allow it."""
    if how == _SAME:
        return (lambda a: a), shape
    if how == _TRANSPOSED:
        if len(shape) != 2:
            raise CheckpointError(f"tensor {source_name!r} has shape {shape}; expected a matrix "
                                  "(a Linear layer's weight)")
        return (lambda a: a.T), (shape[1], shape[0])
    if how == _CHANNELS:
        if len(shape) not in (1, 3) or shape[:-1] not in ((), (1, 1)):
            raise CheckpointError(f"tensor {source_name!r} has shape {shape}; expected (C,) or (1, 1, C)")
        return (lambda a: a.reshape(1, 1, -1)), (1, 1, shape[-1])
    row = how  # an index into the (6, C) fused mixes
    if len(shape) != 2 or shape[0] != len(_MIXES):
        raise CheckpointError(f"tensor {source_name!r} has shape {shape}; expected ({len(_MIXES)}, C): "
                              f"the mixes {', '.join(_MIXES)}")
    return (lambda a: a[row].reshape(1, 1, -1)), (1, 1, shape[1])


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


def _native_names(names: Iterable[str]) -> dict[str, tuple[str, _How]]:
    """{native name: (fla name, how)}; CheckpointError for a name fla's RWKV-7 never has."""
    plan: dict[str, tuple[str, _How]] = {}

    def add(native: str, source: str, how: _How) -> None:
        if native in plan:
            raise CheckpointError(f"{plan[native][0]!r} and {source!r} would both be {native!r}")
        plan[native] = (source, how)

    for name in names:
        if name in _TOP:
            add(_TOP[name], name, _SAME)
            continue
        match = _LAYER.fullmatch(name)
        if match is None:
            raise CheckpointError(f"tensor {name!r} is not part of fla's RWKV-7 model")
        layer, rest = match.groups()
        part, _, leaf = rest.partition(".")
        prefix = f"blocks.{layer}."
        if part in _NORMS and leaf in ("weight", "bias"):
            add(f"{prefix}{_NORMS[part]}.{leaf}", name, _SAME)
        elif part == "attn" and leaf == "x_x":
            for row, mix in enumerate(_MIXES):
                add(f"{prefix}att.{mix}", name, row)
        elif part == "attn" and leaf in _ATTENTION:
            native, how = _ATTENTION[leaf]
            add(f"{prefix}att.{native}", name, how)
        elif part == "ffn" and leaf in _FFN:
            native, how = _FFN[leaf]
            add(f"{prefix}ffn.{native}", name, how)
        elif part == "attn":
            raise CheckpointError(f"tensor {name!r} is not part of an RWKV-7 layer (a hybrid model's "
                                  "attention layer?); only pure RWKV-7 models convert")
        else:
            raise CheckpointError(f"tensor {name!r} is not part of fla's RWKV-7 model")
    return plan


def check_fla_config(config: Optional[Mapping[str, Any]], where: str = "config.json") -> None:
    """Refuses fla model options the engine does not compute, naming the option."""
    if not config:
        return

    def refuse(problem: str) -> NoReturn:
        raise CheckpointError(f"{where}: {problem}")

    if config.get("attn"):
        refuse("the model has softmax-attention layers (\"attn\" is set); only pure RWKV-7 models convert")
    if config.get("hidden_act", "sqrelu") != "sqrelu":
        refuse(f"hidden_act is {config['hidden_act']!r}; RWKV-7's FFN uses a squared ReLU (\"sqrelu\")")
    if config.get("norm_first") is False:
        refuse("norm_first is false: the model has no layer-0 pre-norm (BlinkDL's ln0), which the engine applies")
    hidden = config.get("hidden_size")
    value_dim = config.get("value_dim")
    widths = value_dim if isinstance(value_dim, list) else [value_dim]
    if hidden is not None and any(v is not None and v != hidden for v in widths):
        refuse(f"value_dim {value_dim} differs from hidden_size {hidden}; only value_dim == hidden_size "
               "(every released RWKV-7) converts")


def fla_to_native(checkpoint: Checkpoint) -> Checkpoint:
    """An fla-layout checkpoint with BlinkDL's names and shapes, in the same order.

    A :class:`LazyCheckpoint` comes back as a LazyCheckpoint whose tensors are read (and
    re-laid out) when asked; any other mapping as a dict of arrays. The folder's config.json is
    :mod:`rwkvcpp.conversion.hf`'s business (a tied head, options to refuse).
    """
    plan = _native_names(list(checkpoint))
    if not isinstance(checkpoint, LazyCheckpoint):
        out: dict[str, Array] = {}
        for native, (source, how) in plan.items():
            array = np.asarray(checkpoint[source])
            relayout, _ = _relayout(how, source, array.shape)
            out[native] = np.ascontiguousarray(relayout(array))
        return out
    tensors: dict[str, TensorSource] = {}
    for native, (source, how) in plan.items():
        tensor = checkpoint.tensor(source)
        relayout, shape = _relayout(how, source, tuple(tensor.shape))
        tensors[native] = _Relaid(tensor.numpy, relayout, shape, tensor.dtype)
    return LazyCheckpoint(tensors, source=checkpoint.source)
