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

RWKV-7 comes to Hugging Face in three layouts:

* fla's ``RWKV7ForCausalLM`` (``fla-hub/rwkv7-*``, ``RWKV/RWKV7-Goose-*-HF``): restructured
  weights, undone by :mod:`rwkvcpp.conversion.fla`;
* transformers' ``Rwkv7ForCausalLM``: BlinkDL's names under ``rwkv7.`` (``rwkv7.emb.weight``,
  ``rwkv7.blocks.N.att.x_r``, ``head.weight``); an earlier port of it used the renames above
  under ``rwkv7.`` (``rwkv7.embeddings``, ``pre_ln``, ``attention``, ``feed_forward``);
* RWKV-block's ``RWKV/v7-Goose-*-HF``: BlinkDL's names as they are, nothing to map.

The folder's ``config.json`` is read for what names cannot say: a head tied to the embeddings
(``tie_word_embeddings``, saved without ``head.weight``), and RWKV-7 options the engine does not
compute, which are refused.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, Optional, overload

from .._typing import Checkpoint

from . import untrusted_json
from .fla import check_fla_config, fla_to_native, is_fla_layout
from .lazy import CheckpointError, LazyCheckpoint

# A model's config.json: a few dozen settings, some nested a level or two.
_MAX_CONFIG_BYTES = 10_000_000
_MAX_CONFIG_DEPTH = 32

__all__ = ["is_hf_layout", "to_native_names", "hf_to_native_name", "read_config"]

# transformers' base-model prefixes: Rwkv (v4), the v5/v6 ports, and Rwkv7.
_PREFIXES = ("rwkv.", "rwkv7.")
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
# BlinkDL's layer norms: what the engine computes, whatever a config asks for.
_LAYER_NORM_EPS = 1e-5


def hf_to_native_name(name: str) -> str:
    """The native name for one HF name; names with no HF counterpart come back unchanged
    (``head.weight``) or just without the ``rwkv.``/``rwkv7.`` prefix (``ln_out.*``)."""
    bare = name
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            bare = name[len(prefix):]
            break
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
    """Whether these tensor names follow a Hugging Face RWKV layout (native names never
    contain ``embeddings.``, ``pre_ln.``, ``attention.`` or ``feed_forward.``, nor start with
    ``rwkv7.`` or fla's ``model.layers.``)."""
    names = list(names)
    return (any(_HF_MARKERS.search(name) or name.startswith(_PREFIXES[1]) for name in names)
            or is_fla_layout(names))


def read_config(checkpoint: Checkpoint) -> Optional[dict[str, Any]]:
    """The ``config.json`` beside a checkpoint's file (a Hugging Face folder's), or None."""
    source = getattr(checkpoint, "source", "")
    if not source:
        return None
    folder = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        config = untrusted_json.load_file(path, _MAX_CONFIG_BYTES, _MAX_CONFIG_DEPTH)
    except ValueError as exc:  # UnicodeDecodeError included
        raise CheckpointError(f"config.json: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError("config.json: not a JSON object")
    return config


def _renamed(checkpoint: Checkpoint, names: list[str]) -> Checkpoint:
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


def _with_tied_head(checkpoint: Checkpoint, config: Optional[Mapping[str, Any]]) -> Checkpoint:
    """A model saved with ``tie_word_embeddings`` has no head of its own: it is the embeddings."""
    if "head.weight" in checkpoint or "emb.weight" not in checkpoint or not (config or {}).get("tie_word_embeddings"):
        return checkpoint
    if isinstance(checkpoint, LazyCheckpoint):
        tensors = list(checkpoint.lazy_items()) + [("head.weight", checkpoint.tensor("emb.weight"))]
        return LazyCheckpoint(tensors, source=checkpoint.source)
    return {**checkpoint, "head.weight": checkpoint["emb.weight"]}


def _check_rwkv7_config(checkpoint: Checkpoint, config: Optional[Mapping[str, Any]]) -> None:
    """RWKV-7 config values the tensors must agree with, or the engine cannot honour."""
    if not config or "blocks.0.att.r_k" not in checkpoint:
        return
    shape = tuple(getattr(checkpoint, "shape_of", lambda n: checkpoint[n].shape)("blocks.0.att.r_k"))
    head_size = config.get("head_dim", config.get("head_size"))
    if head_size is not None and len(shape) == 2 and shape[1] != head_size:
        raise CheckpointError(f"config.json: head_dim {head_size} disagrees with the weights, whose r_k "
                              f"{shape} has {shape[1]} channels per head")
    eps = config.get("norm_eps")
    if isinstance(eps, (int, float)) and not math.isclose(eps, _LAYER_NORM_EPS, rel_tol=1e-6):
        raise CheckpointError(f"config.json: norm_eps is {eps}; the engine's norms use BlinkDL's "
                              f"{_LAYER_NORM_EPS:g}")
    if config.get("use_deep_embed"):
        raise CheckpointError("config.json: use_deep_embed is set (RWKV-8 DeepEmbed), which the engine "
                              "does not compute")


@overload
def to_native_names(checkpoint: LazyCheckpoint) -> LazyCheckpoint: ...


@overload
def to_native_names(checkpoint: Checkpoint) -> Checkpoint: ...


def to_native_names(checkpoint: Checkpoint) -> Checkpoint:
    """Rename an HF-layout checkpoint to native names (and shapes, for fla's RWKV-7), keeping
    its order.

    A :class:`LazyCheckpoint` comes back as a LazyCheckpoint over the same lazy tensors (nothing
    is read); any other mapping as a new dict holding the same values. A checkpoint that is not
    in an HF layout is returned as it is.
    """
    names = list(checkpoint.keys())
    if is_fla_layout(names):
        config = read_config(checkpoint)
        check_fla_config(config)
        native = fla_to_native(checkpoint)
    elif is_hf_layout(names):
        config = read_config(checkpoint)
        native = _renamed(checkpoint, names)
    else:
        return checkpoint
    native = _with_tied_head(native, config)
    _check_rwkv7_config(native, config)
    return native
