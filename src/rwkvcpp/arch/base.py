"""What a version module provides: the :class:`Architecture` every RWKV version subclasses.

The generic code (converting checkpoints, the FP16 rule, state files, ``rwkvcpp info``) knows
no version by name; it asks the version's object. Shapes are in PyTorch order throughout.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class Architecture:
    """One RWKV version. Subclasses set the class attributes and override the methods where
    their version differs; one instance per version is registered in :mod:`rwkvcpp.arch`."""

    #: The name models report ("v5.2").
    name: str = ""
    #: Layer-0 attention tensors (named after ``blocks.0.att.``) that identify the version; all
    #: must be there. Versions are tried newest first (see rwkvcpp.arch.ARCHITECTURES), so a
    #: version's markers only need to tell it from the older ones.
    markers: tuple = ()
    #: A layer's attention and FFN tensors, named after ``blocks.N.att.`` / ``blocks.N.ffn.``, in
    #: the order of BlinkDL's released checkpoints (which rwkv.cpp's files keep).
    attention: tuple = ()
    ffn: tuple = ()
    #: Channels per head (n_head = n_embed // head_size); 0 for a version without heads.
    head_size: int = 64
    #: Name fragments of 2-D tensors that an FP16 file keeps as FP32 (docs/FORMAT.md).
    fp32_fragments: tuple = (".time_",)
    #: Attention tensors the file stores as one record: {record name: the checkpoint tensors
    #: concatenated into it, in order}. The record stands where the first of them stood.
    merged: dict = {}
    #: Whether the state holds each head's wkv matrix as [value][key] (the orientation of state
    #: files) rather than [key][value].
    state_value_major: bool = False

    def __repr__(self) -> str:
        return f"<RWKV {self.name}>"

    def n_head(self, n_embed: int) -> int:
        return n_embed // self.head_size if self.head_size else 0

    # ---- checkpoint shapes --------------------------------------------------------------

    def check_attention(self, c, prefix: str, layer: int, n_embed: int, n_head: int) -> None:
        """Checks one layer's attention tensors (``prefix`` = "blocks.N.att.") in the shapes the
        checkpoint has them, through the checker ``c`` (rwkvcpp.conversion.schema)."""
        raise NotImplementedError

    def check_ffn(self, c, prefix: str, n_embed: int) -> int:
        """Checks one layer's FFN tensors (``prefix`` = "blocks.N.ffn."); returns its width."""
        n_ffn, _ = c.matrix(prefix + "key.weight", None, n_embed)
        c.matrix(prefix + "value.weight", n_embed, n_ffn)
        for leaf in self.ffn:
            if not leaf.endswith(".weight"):
                c.vector(prefix + leaf, n_embed)
        if "receptance.weight" in self.ffn:
            c.matrix(prefix + "receptance.weight", n_embed, n_embed)
        return n_ffn

    # ---- checkpoint -> file ---------------------------------------------------------------

    def transform(self, leaf: str, array: np.ndarray, n_head: int, name: str) -> np.ndarray:
        """An attention tensor (``leaf`` named after "blocks.N.att.", already squeezed if it is
        a ``time_`` tensor) as the file stores it."""
        return array

    def merge(self, record: str, parts: list, n_embed: int, names: list) -> np.ndarray:
        """The record ``record`` of :attr:`merged` from its parts (float32, as in the checkpoint)."""
        raise NotImplementedError

    def stored_as_fp16(self, name: str, shape: Sequence[int]) -> bool:
        """Whether a file tensor is FP16 in an FP16 file (docs/FORMAT.md's rule)."""
        return len(shape) == 2 and not any(fragment in name for fragment in self.fp32_fragments)

    # ---- the state ------------------------------------------------------------------------

    def layer_state_len(self, n_embed: int) -> int:
        """Floats of one layer's part of the flat state (docs/FORMAT.md "State"): the FFN's and
        the attention's token-shift vectors, then the layer's wkv matrices."""
        size = self.head_size
        return 2 * n_embed + self.n_head(n_embed) * size * size

    def wkv_views(self, state: np.ndarray, n_embed: int, n_layer: int) -> list:
        """Views of each layer's (n_head, head_size, head_size) wkv matrices inside a flat state,
        as [head][value][key] (state files' orientation); writing a view writes the state."""
        n_head, size = self.n_head(n_embed), self.head_size
        per_layer = self.layer_state_len(n_embed)
        views = []
        for i in range(n_layer):
            start = i * per_layer + 2 * n_embed  # after the two token-shift vectors
            wkv = state[start:start + n_head * size * size].reshape(n_head, size, size)
            views.append(wkv if self.state_value_major else wkv.transpose(0, 2, 1))
        return views


def check_projections(c, prefix: str, n_embed: int, names=("receptance", "key", "value", "output")) -> None:
    """The attention's square (n_embed, n_embed) projection matrices."""
    for name in names:
        c.matrix(prefix + name + ".weight", n_embed, n_embed)


def per_head(name: str, array: np.ndarray, n_head: int, head_size: int) -> np.ndarray:
    """A per-head (H values) or per-channel (H * head_size values) vector as (H, 1, 1) or
    (H, head_size, 1), the shapes the file stores them in."""
    if array.size == n_head:
        return array.reshape(n_head, 1, 1)
    if array.size == n_head * head_size:
        return array.reshape(n_head, head_size, 1)
    raise ValueError(
        f"tensor {name!r} has {array.size} values; expected {n_head} (one per head) or "
        f"{n_head * head_size} (one per channel)"
    )
