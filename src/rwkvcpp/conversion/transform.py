"""From checkpoint tensors to file records: docs/FORMAT.md "From a PyTorch checkpoint to the file".

The generic steps (float32, squeezing ``time_`` tensors, gathering merged records) are here; what
each version does to its own tensors is in its module of :mod:`rwkvcpp.arch`. A LoRA merge or
another source layout would run before this, on a checkpoint in BlinkDL's names.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Iterator, Optional

import numpy as np
from numpy.typing import NDArray

from .._typing import Array, Checkpoint
from ..arch import Architecture, detect
from .schema import shape_of

__all__ = ["transform_checkpoint", "checkpoint_heads", "count_records", "embedding_shape", "as_float32"]

_ATT_NAME = re.compile(r"^blocks\.(\d+)\.att\.(.+)$")


def as_float32(name: str, value: Any) -> NDArray[np.float32]:
    """A checkpoint entry as a float32 numpy array, or a ValueError naming the tensor."""
    if type(value).__module__.split(".")[0] == "torch":
        # A torch tensor (possibly bfloat16, which numpy cannot hold): widen on the torch side.
        if not value.is_floating_point():
            raise ValueError(f"tensor {name!r} has dtype {value.dtype}; expected floating point")
        widened: NDArray[np.float32] = value.detach().to("cpu").float().numpy()
        return widened
    if not isinstance(value, np.ndarray):
        raise ValueError(f"checkpoint entry {name!r} is a {type(value).__name__}, not an array")
    if value.dtype.kind != "f":
        raise ValueError(
            f"tensor {name!r} has dtype {value.dtype}; expected float16/float32/float64 "
            "(widen bfloat16 to float32 before converting)"
        )
    return value.astype(np.float32, copy=False)


def embedding_shape(checkpoint: Checkpoint) -> tuple[int, int]:
    """(n_vocab, n_embed) from ``emb.weight``."""
    if "emb.weight" not in checkpoint:
        raise ValueError("checkpoint has no 'emb.weight': not an RWKV model, or not a full checkpoint")
    shape = shape_of(checkpoint, "emb.weight")
    if len(shape) != 2:
        raise ValueError(f"'emb.weight' has shape {shape}; expected (n_vocab, n_embed)")
    return shape[0], shape[1]


def detect_checked(names: Iterable[str]) -> Architecture:
    """The checkpoint's version; ValueError when it is none of them."""
    arch = detect(names)
    if arch is None:
        raise ValueError("unknown architecture: the checkpoint's layer-0 attention tensors match no "
                         "RWKV version")
    return arch


def checkpoint_heads(checkpoint: Checkpoint, arch: Architecture, n_embed: int) -> tuple[int, int]:
    """(n_head, head_size) of a checkpoint, from layer 0's head tensor (see
    :meth:`rwkvcpp.arch.Architecture.heads`); (0, 0) for a version without heads."""
    if not arch.head_tensor:
        return 0, 0
    name = "blocks.0.att." + arch.head_tensor
    if name not in checkpoint:
        raise ValueError(f"{arch.name} checkpoint has no {name!r}, which gives the head count")
    return arch.heads(name, shape_of(checkpoint, name), n_embed)


def _merged_sources(arch: Architecture) -> dict[str, tuple[str, tuple[str, ...]]]:
    """{checkpoint leaf: (record leaf, all its sources)} for the version's merged records."""
    return {source: (record, sources) for record, sources in arch.merged.items() for source in sources}


def transform_checkpoint(checkpoint: Checkpoint,
                         arch: Optional[Architecture] = None) -> Iterator[tuple[str, Array]]:
    """Yields (name, float32 array in PyTorch shape) as the file stores them, in checkpoint order.

    Squeezes ``.time_`` tensors, applies the version's transforms and gathers its merged
    records (v7's ``att.x_rwkvag``). The FP16 rule is not applied here: arrays are float32
    whatever type they will be stored as.
    """
    if arch is None:
        arch = detect_checked(checkpoint)
    _, n_embed = embedding_shape(checkpoint)
    n_head, _ = checkpoint_heads(checkpoint, arch, n_embed)
    merged = _merged_sources(arch)

    for name, value in checkpoint.items():
        match = _ATT_NAME.match(name)
        layer, leaf = (int(match.group(1)), match.group(2)) if match else (None, None)

        if leaf in merged:
            # One record at the position of the first source; the others produce nothing
            # where they stand.
            record, sources = merged[leaf]
            if leaf != sources[0]:
                continue
            keys = [f"blocks.{layer}.att.{source}" for source in sources]
            for key in keys:
                if key not in checkpoint:
                    raise ValueError(f"{arch.name} checkpoint has {name!r} but no {key!r}")
            parts = [as_float32(key, checkpoint[key]) for key in keys]
            yield f"blocks.{layer}.att.{record}", arch.merge(record, parts, n_embed, keys)
            continue

        array = as_float32(name, value)
        if ".time_" in name:
            array = np.squeeze(array)
        if leaf is not None:
            array = arch.transform(leaf, array, n_head, name)
        if array.ndim == 0:
            raise ValueError(f"tensor {name!r} is a scalar; every tensor needs 1 to 3 dimensions")
        yield name, np.ascontiguousarray(array, dtype=np.float32)


def count_records(names: Iterable[str], arch: Architecture) -> int:
    """How many records :func:`transform_checkpoint` makes of these tensors: one per tensor,
    except that each merged record's sources become one."""
    merged = _merged_sources(arch)
    count = 0
    for name in names:
        match = _ATT_NAME.match(name)
        leaf = match.group(2) if match else None
        if leaf not in merged or leaf == merged[leaf][1][0]:
            count += 1
    return count
