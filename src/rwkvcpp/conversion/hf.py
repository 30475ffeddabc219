"""Map Hugging Face RWKV tensor names back to BlinkDL's native names.

The Hugging Face RWKV checkpoints (transformers' ``RwkvForCausalLM`` for RWKV-4, and the
``RWKV/v5-*-HF`` and ``RWKV/v6-Finch-*-HF`` repos' own modeling code) were made from BlinkDL
``.pth`` files by renaming alone; the values and shapes are unchanged. The renames were:

=============================  ==================================
native (BlinkDL)               Hugging Face
=============================  ==================================
``emb.weight``                 ``rwkv.embeddings.weight``
``blocks.0.ln0.*``             ``rwkv.blocks.0.pre_ln.*``
``blocks.N.ln1.*``, ``ln2``    ``rwkv.blocks.N.ln1.*``, ``ln2``
``blocks.N.att.*``             ``rwkv.blocks.N.attention.*``
``blocks.N.ffn.*``             ``rwkv.blocks.N.feed_forward.*``
``...time_mix_k/v/r/g``        ``...time_mix_key/value/receptance/gate`` (v4, v5)
``ln_out.*``                   ``rwkv.ln_out.*``
``head.weight``                ``head.weight``
=============================  ==================================

RWKV-6's ``time_maa_*`` names were not renamed. A base ``RwkvModel`` (no LM head) is saved
without the ``rwkv.`` prefix; both forms are accepted here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .lazy import CheckpointError, LazyCheckpoint

__all__ = ["is_hf_layout", "to_native_names", "hf_to_native_name"]

_PREFIX = "rwkv."
_BLOCK = re.compile(r"blocks\.(\d+)\.(pre_ln|ln1|ln2|attention|feed_forward)\.(.+)")
_BLOCK_PARTS = {"pre_ln": "ln0", "ln1": "ln1", "ln2": "ln2", "attention": "att", "feed_forward": "ffn"}
# Only whole parameter names are renamed, so e.g. v6's time_maa_k is left alone.
_PARAMETER_RENAMES = {
    "time_mix_key": "time_mix_k",
    "time_mix_value": "time_mix_v",
    "time_mix_receptance": "time_mix_r",
    "time_mix_gate": "time_mix_g",
}
# Name parts that only the HF layout uses.
_HF_MARKERS = re.compile(r"(^|\.)(embeddings|pre_ln|attention|feed_forward)\.")


def hf_to_native_name(name: str) -> str:
    """The native name for one HF name; names with no HF counterpart come back unchanged
    (``head.weight``) or just without the ``rwkv.`` prefix (``ln_out.*``)."""
    bare = name.removeprefix(_PREFIX)
    if bare.startswith("embeddings."):
        return "emb." + bare[len("embeddings."):]
    match = _BLOCK.fullmatch(bare)
    if match:
        layer, part, rest = match.groups()
        if part in ("attention", "feed_forward"):
            rest = _PARAMETER_RENAMES.get(rest, rest)
        return f"blocks.{layer}.{_BLOCK_PARTS[part]}.{rest}"
    return bare


def is_hf_layout(names: Iterable[str]) -> bool:
    """Whether these tensor names follow the Hugging Face RWKV layout (native names never
    contain ``embeddings.``, ``pre_ln.``, ``attention.`` or ``feed_forward.``)."""
    return any(_HF_MARKERS.search(name) for name in names)


def to_native_names(checkpoint: Mapping):
    """Rename an HF-layout checkpoint to native names, keeping its order.

    A :class:`LazyCheckpoint` comes back as a LazyCheckpoint over the same lazy tensors (nothing
    is read); any other mapping as a new dict holding the same values. A checkpoint that is not
    in the HF layout is returned as it is.
    """
    names = list(checkpoint.keys())
    if any(name.startswith("model.layers.") for name in names):
        # flash-linear-attention's RWKV-7 ports (fla-hub/rwkv7-*) restructure the weights
        # (fused LoRAs, different shapes), which a renaming cannot undo.
        raise CheckpointError("this looks like a flash-linear-attention (fla-hub) checkpoint, "
                              "which is not supported; convert the original BlinkDL .pth instead")
    if not is_hf_layout(names):
        return checkpoint
    mapping = {name: hf_to_native_name(name) for name in names}
    if len(set(mapping.values())) != len(mapping):
        seen: dict[str, str] = {}
        for old, new in mapping.items():
            if new in seen:
                raise CheckpointError(f"{seen[new]!r} and {old!r} would both be named {new!r}")
            seen[new] = old
    if isinstance(checkpoint, LazyCheckpoint):
        return checkpoint.renamed(mapping)
    return {mapping[name]: checkpoint[name] for name in names}
