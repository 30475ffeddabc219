"""RWKV-5 (Eagle): multi-head (64 wide in the releases), a decay and bonus per head or per channel, group norm ln_x.

rwkv.cpp's "v5.1" is the official 5.0 (and the rare official 5.1): no gate, the bonus named
time_first. "v5.2" adds the gate and names the bonus time_faaaa.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._typing import Array
from .base import Architecture, check_projections, per_head

if TYPE_CHECKING:
    from ..conversion.schema import _Checker as Checker


class RWKV5_1(Architecture):
    name = "v5.1"
    markers: tuple[str, ...] = ("ln_x.weight",)
    attention = ("time_mix_k", "time_mix_v", "time_mix_r", "time_mix_g", "time_decay", "time_first", "time_faaaa",
                 "receptance.weight", "key.weight", "value.weight", "output.weight", "gate.weight",
                 "ln_x.weight", "ln_x.bias")
    ffn = ("time_mix_k", "time_mix_r", "key.weight", "receptance.weight", "value.weight")
    gated = False
    head_tensor = file_head_tensor = "time_decay"

    def check_attention(self, c: Checker, prefix: str, layer: int, n_embed: int, n_head: int) -> None:
        check_projections(c, prefix, n_embed)
        for name in ("time_mix_k", "time_mix_v", "time_mix_r"):
            c.vector(prefix + name, n_embed)
        # One decay and bonus per head or per channel; the bonus is time_first in 5.0 files,
        # time_faaaa later.
        c.vector(prefix + "time_decay", n_head, n_embed)
        c.vector(prefix + ("time_faaaa" if prefix + "time_faaaa" in c.checkpoint else "time_first"),
                 n_head, n_embed)
        if self.gated:
            c.vector(prefix + "time_mix_g", n_embed)
            c.matrix(prefix + "gate.weight", n_embed, n_embed)
        c.norm(prefix + "ln_x", n_embed)

    def transform(self, leaf: str, array: Array, n_head: int, name: str) -> Array:
        if leaf == "time_decay":
            return per_head(name, np.exp(-np.exp(array)), n_head)
        if leaf == "time_first":  # v5.1 only; v5.2 has time_faaaa, used as it is
            return per_head(name, np.exp(array), n_head)
        if leaf == "time_faaaa":
            return per_head(name, array, n_head)
        return array


class RWKV5_2(RWKV5_1):
    name = "v5.2"
    markers = ("ln_x.weight", "gate.weight")
    gated = True


V5_1 = RWKV5_1()
V5_2 = RWKV5_2()
