"""The RWKV versions, one module each: v4.py, v5.py (v5.1 and v5.2), v6.py, v7.py.

A version's module owns all the Python side knows of it: its tensor names and their order, how
it is recognised, the shapes its checkpoint tensors must have, how they become file records, the
FP16 rule's exceptions and the layout of its state (see :class:`~rwkvcpp.arch.base.Architecture`).
Everything else (conversion, state files, ``rwkvcpp info``) looks the version up here.

Adding a version: a module with an Architecture subclass and its instance, that instance in
:data:`ARCHITECTURES`, and tests (tests/support/checkpoints.py makes a checkpoint of each version).
"""

from __future__ import annotations

from typing import Iterable, Optional

from .base import Architecture
from .v4 import V4
from .v5 import V5_1, V5_2
from .v6 import V6
from .v7 import V7

__all__ = ["ARCHITECTURES", "Architecture", "detect", "get"]

#: Every version, newest first: detection tries them in this order, because newer versions keep
#: marker tensors of older ones (v6 and v7 have v5's ln_x, v6 v5.2's gate).
ARCHITECTURES = (V7, V6, V5_2, V5_1, V4)

_BY_NAME = {arch.name: arch for arch in ARCHITECTURES}


def get(name: str) -> Architecture:
    """The version named ``name`` ("v4", "v5.1", "v5.2", "v6", "v7")."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown RWKV version {name!r}; known: {', '.join(_BY_NAME)}") from None


def detect(names: Iterable[str]) -> Optional[Architecture]:
    """The version of a model (checkpoint or file) from its tensor names, or None when it is none
    of them (docs/FORMAT.md "Which architecture ...")."""
    names = set(names)
    for arch in ARCHITECTURES:
        if all(f"blocks.0.att.{marker}" in names for marker in arch.markers):
            return arch
    return None
