"""RWKV-4: no heads; per-channel decay and bonus, the state's wkv part is three vectors."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._typing import Array
from .base import Architecture, check_projections

if TYPE_CHECKING:
    from ..conversion.schema import _Checker as Checker


class RWKV4(Architecture):
    name = "v4"
    markers = ("time_decay", "time_first", "time_mix_k")
    attention = ("time_decay", "time_first", "time_mix_k", "time_mix_v", "time_mix_r",
                 "key.weight", "value.weight", "receptance.weight", "output.weight")
    ffn = ("time_mix_k", "time_mix_r", "key.weight", "receptance.weight", "value.weight")

    def check_attention(self, c: Checker, prefix: str, layer: int, n_embed: int, n_head: int) -> None:
        check_projections(c, prefix, n_embed)
        for name in ("time_decay", "time_first", "time_mix_k", "time_mix_v", "time_mix_r"):
            c.vector(prefix + name, n_embed)

    def transform(self, leaf: str, array: Array, n_head: int, name: str) -> Array:
        if leaf == "time_decay":
            return -np.exp(array)
        return array

    def layer_state_len(self, n_embed: int, n_head: int, head_size: int) -> int:
        return 5 * n_embed  # ffn x, att x, aa, bb, pp

    def wkv_views(self, state: Array, n_embed: int, n_layer: int, n_head: int, head_size: int) -> list[Array]:
        raise ValueError("an RWKV v4 state has no wkv matrices")


V4 = RWKV4()
