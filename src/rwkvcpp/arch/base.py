"""What a version module provides: the :class:`Architecture` every RWKV version subclasses.

The generic code (converting checkpoints, the FP16 rule, state files, ``rwkvcpp info``) knows
no version by name; it asks the version's object. Shapes are in PyTorch order throughout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Sequence

from .._typing import Array

if TYPE_CHECKING:
    from ..conversion.schema import _Checker as Checker

#: The head size of every released v5, v6 and v7 model, and of any file whose head tensor does not
#: give the head count (a flat (n_embed,) vector, as some converters write v6's time_decay).
RELEASED_HEAD_SIZE = 64


class Architecture:
    """One RWKV version. Subclasses set the class attributes and override the methods where
    their version differs; one instance per version is registered in :mod:`rwkvcpp.arch`."""

    #: The name models report ("v5.2").
    name: str = ""
    #: Layer-0 attention tensors (named after ``blocks.0.att.``) that identify the version; all
    #: must be there. Versions are tried newest first (see rwkvcpp.arch.ARCHITECTURES), so a
    #: version's markers only need to tell it from the older ones.
    markers: tuple[str, ...] = ()
    #: A layer's attention and FFN tensors, named after ``blocks.N.att.`` / ``blocks.N.ffn.``, in
    #: the order of BlinkDL's released checkpoints (which rwkv.cpp's files keep).
    attention: tuple[str, ...] = ()
    ffn: tuple[str, ...] = ()
    #: The attention tensor whose outermost dimension is the head count (the head size is
    #: n_embed / n_head), in checkpoints and in model files; "" for a version without heads.
    #: The file's may differ: v6 checkpoints carry the count in time_faaaa (H, S) only, files (as
    #: rwkv.cpp reads them) in time_decay (H, S, 1).
    head_tensor: str = ""
    file_head_tensor: str = ""
    #: Name fragments of 2-D tensors that an FP16 file keeps as FP32 (docs/FORMAT.md).
    fp32_fragments: tuple[str, ...] = (".time_",)
    #: Attention tensors the file stores as one record: {record name: the checkpoint tensors
    #: concatenated into it, in order}. The record stands where the first of them stood.
    merged: dict[str, tuple[str, ...]] = {}
    #: Whether the state holds each head's wkv matrix as [value][key] (the orientation of state
    #: files) rather than [key][value].
    state_value_major: bool = False

    def __repr__(self) -> str:
        return f"<RWKV {self.name}>"

    def heads(self, name: str, shape: Sequence[int], n_embed: int) -> tuple[int, int]:
        """(n_head, head_size) from the shape (PyTorch order) of the head tensor ``name``
        (:attr:`head_tensor` in a checkpoint, :attr:`file_head_tensor` in a file; see
        :func:`head_count`), with heads of :data:`RELEASED_HEAD_SIZE` when it does not say.
        (0, 0) for a version without heads. ValueError naming the tensor when the sizes do not
        fit together."""
        if not self.head_tensor:
            return 0, 0
        shape = tuple(int(n) for n in shape)
        n_head = head_count(shape, n_embed)
        if n_head == 0:
            if n_embed % RELEASED_HEAD_SIZE:
                raise ValueError(f"tensor {name!r} has shape {shape}, which does not give the head count, and "
                                 f"n_embed {n_embed} is not a multiple of the head size {RELEASED_HEAD_SIZE} "
                                 "such models have")
            return n_embed // RELEASED_HEAD_SIZE, RELEASED_HEAD_SIZE
        if n_embed % n_head:
            raise ValueError(f"tensor {name!r} has shape {shape}: {n_head} heads, which do not divide "
                             f"n_embed {n_embed}")
        return n_head, n_embed // n_head

    def file_heads(self, shapes: Mapping[str, Sequence[int]], n_embed: int) -> tuple[int, int]:
        """(n_head, head_size) of a model file from its tensors' shapes ({name: PyTorch shape}),
        as the engine reads them; (0, 0) for a version without heads."""
        if not self.head_tensor:
            return 0, 0
        name = "blocks.0.att." + self.file_head_tensor
        if name not in shapes:
            raise ValueError(f"missing tensor {name!r}, which gives an {self.name} model's head count")
        return self.heads(name, shapes[name], n_embed)

    # ---- checkpoint shapes --------------------------------------------------------------

    def check_attention(self, c: Checker, prefix: str, layer: int, n_embed: int, n_head: int) -> None:
        """Checks one layer's attention tensors (``prefix`` = "blocks.N.att.") in the shapes the
        checkpoint has them, through the checker ``c`` (rwkvcpp.conversion.schema)."""
        raise NotImplementedError

    def check_ffn(self, c: Checker, prefix: str, n_embed: int) -> int:
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

    def transform(self, leaf: str, array: Array, n_head: int, name: str) -> Array:
        """An attention tensor (``leaf`` named after "blocks.N.att.", already squeezed if it is
        a ``time_`` tensor) as the file stores it."""
        return array

    def merge(self, record: str, parts: list[Array], n_embed: int, names: Sequence[str]) -> Array:
        """The record ``record`` of :attr:`merged` from its parts (float32, as in the checkpoint)."""
        raise NotImplementedError

    def stored_as_fp16(self, name: str, shape: Sequence[int]) -> bool:
        """Whether a file tensor is FP16 in an FP16 file (docs/FORMAT.md's rule)."""
        return len(shape) == 2 and not any(fragment in name for fragment in self.fp32_fragments)

    # ---- the state ------------------------------------------------------------------------

    def layer_state_len(self, n_embed: int, n_head: int, head_size: int) -> int:
        """Floats of one layer's part of the flat state (docs/FORMAT.md "State"): the FFN's and
        the attention's token-shift vectors, then the layer's wkv matrices."""
        return 2 * n_embed + n_head * head_size * head_size

    def wkv_views(self, state: Array, n_embed: int, n_layer: int, n_head: int, head_size: int) -> list[Array]:
        """Views of each layer's (n_head, head_size, head_size) wkv matrices inside a flat state,
        as [head][value][key] (state files' orientation); writing a view writes the state."""
        per_layer = self.layer_state_len(n_embed, n_head, head_size)
        views = []
        for i in range(n_layer):
            start = i * per_layer + 2 * n_embed  # after the two token-shift vectors
            wkv = state[start:start + n_head * head_size * head_size].reshape(n_head, head_size, head_size)
            views.append(wkv if self.state_value_major else wkv.transpose(0, 2, 1))
        return views


def head_count(shape: Sequence[int], n_embed: int) -> int:
    """The head count a head tensor's shape gives, as rwkv.cpp reads it: the outermost size when
    it has two or more dimensions ((H, S), (H, S, 1), (H, 1, 1)), the length of a vector of one
    value per head (fewer than n_embed values); 0 when it does not say (a flat vector of n_embed)."""
    if len(shape) > 1:
        return int(shape[0])
    count = math.prod(shape)
    return count if count < n_embed else 0


def check_projections(c: Checker, prefix: str, n_embed: int,
                      names: Sequence[str] = ("receptance", "key", "value", "output")) -> None:
    """The attention's square (n_embed, n_embed) projection matrices."""
    for name in names:
        c.matrix(prefix + name + ".weight", n_embed, n_embed)


def per_head(name: str, array: Array, n_head: int) -> Array:
    """A per-head (H values) or per-channel (H * head size values) vector as (H, 1, 1) or
    (H, head size, 1), the shapes the file stores them in, which give the head count."""
    if array.size == n_head:
        return array.reshape(n_head, 1, 1)
    if n_head and array.size % n_head == 0:
        return array.reshape(n_head, array.size // n_head, 1)
    raise ValueError(
        f"tensor {name!r} has {array.size} values; expected {n_head} (one per head) or a multiple of "
        f"{n_head} (one per channel)"
    )
