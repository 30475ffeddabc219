"""RWKV-6 (Finch): data-dependent token shift (time_maa_*) and decay (time_decay_w*), LoRA-style."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._typing import Array
from .base import Architecture, check_projections, per_head

if TYPE_CHECKING:
    from ..conversion.schema import _Checker as Checker


class RWKV6(Architecture):
    name = "v6"
    markers = ("time_maa_x",)
    attention = ("time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g",
                 "time_maa_w1", "time_maa_w2", "time_decay", "time_decay_w1", "time_decay_w2", "time_faaaa",
                 "receptance.weight", "key.weight", "value.weight", "output.weight", "gate.weight",
                 "ln_x.weight", "ln_x.bias")
    ffn = ("time_maa_k", "time_maa_r", "key.weight", "receptance.weight", "value.weight")
    # The checkpoint's time_decay is (1, 1, C); the file's is (H, S, 1), as is its time_faaaa.
    head_tensor = "time_faaaa"
    file_head_tensor = "time_decay"

    def check_attention(self, c: Checker, prefix: str, layer: int, n_embed: int, n_head: int) -> None:
        check_projections(c, prefix, n_embed)
        for name in ("time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g",
                     "time_decay", "time_faaaa"):
            c.vector(prefix + name, n_embed)
        _, width5 = c.matrix(prefix + "time_maa_w1", n_embed, None)
        if width5 % 5:
            c.fail(f"tensor {prefix + 'time_maa_w1'!r} has {width5} columns; expected a multiple of 5 "
                   "(one low-rank block for each of w, k, v, r, g)")
        w2 = c.shape(prefix + "time_maa_w2")
        if w2 != (5, width5 // 5, n_embed):
            c.fail(f"tensor {prefix + 'time_maa_w2'!r} has shape {w2}; expected (5, {width5 // 5}, {n_embed})")
        _, width = c.matrix(prefix + "time_decay_w1", n_embed, None)
        c.matrix(prefix + "time_decay_w2", width, n_embed)
        c.matrix(prefix + "gate.weight", n_embed, n_embed)
        c.norm(prefix + "ln_x", n_embed)

    def transform(self, leaf: str, array: Array, n_head: int, name: str) -> Array:
        if leaf in ("time_faaaa", "time_decay"):
            return per_head(name, array, n_head)
        # As docs/FORMAT.md says, rwkv.cpp transposes every ".time_decay_w*" (w2 too);
        # match its files.
        if leaf in ("time_maa_w1", "time_decay_w1", "time_decay_w2"):
            return np.ascontiguousarray(array.T)
        if leaf == "time_maa_w2":  # (5, D, C) -> (5, C, D)
            return np.ascontiguousarray(array.transpose(0, 2, 1))
        return array


V6 = RWKV6()
