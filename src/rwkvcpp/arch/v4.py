"""RWKV-4: no heads; per-channel decay and bonus, the state's wkv part is three vectors."""

from __future__ import annotations

import numpy as np

from .base import Architecture, check_projections


class RWKV4(Architecture):
    name = "v4"
    markers = ("time_decay", "time_first", "time_mix_k")
    attention = ("time_decay", "time_first", "time_mix_k", "time_mix_v", "time_mix_r",
                 "key.weight", "value.weight", "receptance.weight", "output.weight")
    ffn = ("time_mix_k", "time_mix_r", "key.weight", "receptance.weight", "value.weight")

    def check_attention(self, c, prefix, layer, n_embed, n_head):
        check_projections(c, prefix, n_embed)
        for name in ("time_decay", "time_first", "time_mix_k", "time_mix_v", "time_mix_r"):
            c.vector(prefix + name, n_embed)

    def transform(self, leaf, array, n_head, name):
        if leaf == "time_decay":
            return -np.exp(array)
        return array

    def layer_state_len(self, n_embed, n_head, head_size):
        return 5 * n_embed  # ffn x, att x, aa, bb, pp

    def wkv_views(self, state, n_embed, n_layer, n_head, head_size):
        raise ValueError("an RWKV v4 state has no wkv matrices")


V4 = RWKV4()
