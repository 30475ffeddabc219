"""RWKV-7 (Goose): six token-shift mixes stored as one tensor, LoRA pairs stored transposed, a
value residual from layer 0, and a state kept as [value][key]."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from .._typing import Array
from .base import Architecture, check_projections

#: The six token-shift mixes, in the order they are concatenated into att.x_rwkvag.
MIXES = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")
#: Low-rank pairs, (C, width) down and (width, C) up, stored transposed; v1/v2 (the value
#: residual) only from layer 1 on.
LORA_NAMES = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")
if TYPE_CHECKING:
    from ..conversion.schema import _Checker as Checker


class RWKV7(Architecture):
    name = "v7"
    markers = ("r_k",)
    attention = MIXES + ("w0", "w1", "w2", "a0", "a1", "a2", "v0", "v1", "v2", "g1", "g2", "k_k", "k_a", "r_k",
                         "receptance.weight", "key.weight", "value.weight", "output.weight",
                         "ln_x.weight", "ln_x.bias")
    ffn = ("x_k", "key.weight", "value.weight")
    fp32_fragments = (".time_", ".k_k", ".k_a", ".r_k", ".x_rwkvag", ".x_k", ".w0", ".a0", ".v0")
    merged = {"x_rwkvag": MIXES}
    head_tensor = file_head_tensor = "r_k"  # (H, S)
    # Its kernel computes S = S*w + S@ab + v k^T on [value][key] matrices.
    state_value_major = True

    def check_attention(self, c: Checker, prefix: str, layer: int, n_embed: int, n_head: int) -> None:
        check_projections(c, prefix, n_embed)
        for name in MIXES + ("w0", "a0", "k_k", "k_a", "r_k"):
            c.vector(prefix + name, n_embed)
        # Layer 0 makes v_first and has no value-residual pair (v0, v1, v2).
        for down, up in (("w1", "w2"), ("a1", "a2"), ("g1", "g2")) + ((("v1", "v2"),) if layer else ()):
            _, width = c.matrix(prefix + down, n_embed, None)
            c.matrix(prefix + up, width, n_embed)
        if layer:
            c.vector(prefix + "v0", n_embed)
        c.norm(prefix + "ln_x", n_embed)

    def transform(self, leaf: str, array: Array, n_head: int, name: str) -> Array:
        if leaf in LORA_NAMES:
            return np.ascontiguousarray(array.T)
        return array

    def merge(self, record: str, parts: list[Array], n_embed: int, names: Sequence[str]) -> Array:
        # x_rwkvag: the six (1, 1, C) mixes as one (6, 1, C) tensor.
        for name, part in zip(names, parts):
            if part.size != n_embed:
                raise ValueError(f"tensor {name!r} has shape {part.shape}; expected (1, 1, {n_embed})")
        return np.concatenate([part.reshape(1, 1, n_embed) for part in parts], axis=0)


V7 = RWKV7()
