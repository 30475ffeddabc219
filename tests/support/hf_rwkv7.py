"""Hugging Face RWKV-7 folders made from a native checkpoint (tests/support/checkpoints.py), for
tests of the converter and of other tools that read these layouts (llama.cpp's converter reads
the fla one).

The forward mappings follow the publishers' own converters, read for their facts:

* fla (flash-linear-attention's ``utils/convert_from_rwkv7.py`` and ``fla/layers/rwkv7.py``):
  each low-rank pair becomes ``X_lora.lora.0`` (``Linear(C, D)``, weight ``X1.T``) and
  ``X_lora.lora.2`` (``Linear(D, C)``, weight ``X2.T``, bias ``X0``); projections become
  ``r/k/v/o_proj``, ``ln_x`` the GroupNorm ``g_norm``; ``k_k``, ``k_a``, ``ffn.x_k`` and the
  biases are stored as (C,); layer 0 has no value-residual pair. fla before April 2025 stored
  the six mixes as one (6, C) ``attn.x_x``.
* transformers' ``Rwkv7ForCausalLM``: BlinkDL's names under ``rwkv7.``, ``head.weight`` as is;
  its first port used ``rwkv7.embeddings``, ``pre_ln``, ``attention``, ``feed_forward``.
* RWKV-block (``RWKV/v7-Goose-*-HF``): BlinkDL's names unchanged.

``write_hf_folder`` writes ``config.json`` and the tensors as safetensors (bf16, fp16 or fp32,
one file or shards with an index) or ``pytorch_model.bin``, without torch.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np

from support import pth_writer as pw

MIXES = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")
_PROJECTIONS = {"receptance.weight": "r_proj.weight", "key.weight": "k_proj.weight",
                "value.weight": "v_proj.weight", "output.weight": "o_proj.weight",
                "ln_x.weight": "g_norm.weight", "ln_x.bias": "g_norm.bias"}
_NORMS = {"ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm"}
_TOP = {"emb.weight": "model.embeddings.weight", "ln_out.weight": "model.norm.weight",
        "ln_out.bias": "model.norm.bias", "head.weight": "lm_head.weight"}


def _sizes(checkpoint) -> dict:
    n_vocab, n_embed = checkpoint["emb.weight"].shape
    n_layer = 1 + max(int(name.split(".")[1]) for name in checkpoint if name.startswith("blocks."))
    n_head, head_size = checkpoint["blocks.0.att.r_k"].shape
    value_layer = next(i for i in range(n_layer) if f"blocks.{i}.att.v1" in checkpoint)
    return {
        "vocab_size": int(n_vocab), "hidden_size": int(n_embed), "num_hidden_layers": n_layer,
        "num_heads": int(n_head), "head_dim": int(head_size),
        "intermediate_size": int(checkpoint["blocks.0.ffn.key.weight"].shape[0]),
        "decay_low_rank_dim": int(checkpoint["blocks.0.att.w1"].shape[1]),
        "a_low_rank_dim": int(checkpoint["blocks.0.att.a1"].shape[1]),
        "v_low_rank_dim": int(checkpoint[f"blocks.{value_layer}.att.v1"].shape[1]),
        "gate_low_rank_dim": int(checkpoint["blocks.0.att.g1"].shape[1]),
    }


# ----------------------------------------------------------------------------- fla


def to_fla(checkpoint: dict, fused_mixes: bool = False) -> dict:
    """fla's names and shapes of a native v7 checkpoint, in fla's module order."""
    out = {"model.embeddings.weight": checkpoint["emb.weight"]}
    n_layer = _sizes(checkpoint)["num_hidden_layers"]
    for i in range(n_layer):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        for norm in ("ln0", "ln1") if i == 0 else ("ln1",):
            for leaf in ("weight", "bias"):
                out[f"{dst}{_NORMS[norm]}.{leaf}"] = checkpoint[f"{src}{norm}.{leaf}"]
        att = src + "att."
        if fused_mixes:
            out[dst + "attn.x_x"] = np.concatenate([checkpoint[att + m].reshape(1, -1) for m in MIXES])
        else:
            for mix in MIXES:
                out[f"{dst}attn.{mix}"] = checkpoint[att + mix]
        for name in ("k_k", "k_a"):
            out[f"{dst}attn.{name}"] = checkpoint[att + name].reshape(-1)
        out[dst + "attn.r_k"] = checkpoint[att + "r_k"]
        for native in ("receptance.weight", "key.weight", "value.weight", "output.weight"):
            out[f"{dst}attn.{_PROJECTIONS[native]}"] = checkpoint[att + native]
        for pair in ("w", "v", "a", "g"):
            if pair == "v" and i == 0:
                continue  # layer 0 makes v_first; fla has no value-residual module there
            lora = f"{dst}attn.{pair}_lora.lora."
            out[lora + "0.weight"] = np.ascontiguousarray(checkpoint[f"{att}{pair}1"].T)
            out[lora + "2.weight"] = np.ascontiguousarray(checkpoint[f"{att}{pair}2"].T)
            if pair != "g":
                out[lora + "2.bias"] = checkpoint[f"{att}{pair}0"].reshape(-1)
        for leaf in ("weight", "bias"):
            out[f"{dst}attn.g_norm.{leaf}"] = checkpoint[f"{att}ln_x.{leaf}"]
            out[f"{dst}ffn_norm.{leaf}"] = checkpoint[f"{src}ln2.{leaf}"]
        out[dst + "ffn.x_k"] = checkpoint[src + "ffn.x_k"].reshape(-1)
        for leaf in ("key.weight", "value.weight"):
            out[f"{dst}ffn.{leaf}"] = checkpoint[f"{src}ffn.{leaf}"]
    for native in ("ln_out.weight", "ln_out.bias", "head.weight"):
        out[_TOP[native]] = checkpoint[native]
    return out


def fla_config(checkpoint: dict, **overrides) -> dict:
    """The config.json fla's ``save_pretrained`` writes for this model (RWKV7Config's fields)."""
    sizes = _sizes(checkpoint)
    config = {
        "architectures": ["RWKV7ForCausalLM"], "model_type": "rwkv7", "attn": None, "attn_mode": "chunk",
        "bos_token_id": 1, "eos_token_id": 2, "fuse_cross_entropy": True, "fuse_norm": True,
        "hidden_act": "sqrelu", "hidden_ratio": sizes["intermediate_size"] / sizes["hidden_size"],
        "initializer_range": 0.02, "max_position_embeddings": 2048, "norm_bias": True, "norm_eps": 1e-05,
        "norm_first": True, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
        "value_dim": [sizes["hidden_size"]] * sizes["num_hidden_layers"], **sizes,
    }
    config.update(overrides)
    return config


# ----------------------------------------------------------------------------- transformers, RWKV-block


def to_transformers_rwkv7(checkpoint: dict, first_port: bool = False) -> dict:
    """transformers' Rwkv7ForCausalLM names: BlinkDL's under ``rwkv7.``, or (``first_port``)
    with v4's HF renames (embeddings, pre_ln, attention, feed_forward)."""
    parts = {"ln0": "pre_ln", "att": "attention", "ffn": "feed_forward"} if first_port else {}
    out = {}
    for name, value in checkpoint.items():
        if name == "head.weight":
            out[name] = value
            continue
        if first_port and name == "emb.weight":
            name = "embeddings.weight"
        match = re.fullmatch(r"blocks\.(\d+)\.(\w+)\.(.+)", name)
        if match:
            layer, part, rest = match.groups()
            name = f"blocks.{layer}.{parts.get(part, part)}.{rest}"
        out["rwkv7." + name] = value
    return out


def transformers_rwkv7_config(checkpoint: dict, **overrides) -> dict:
    config = {"architectures": ["Rwkv7ForCausalLM"], "model_type": "rwkv7", "norm_eps": 1e-05,
              "norm_bias": True, "tie_word_embeddings": False, "dtype": "bfloat16", **_sizes(checkpoint)}
    config.update(overrides)
    return config


def rwkv_block_config(checkpoint: dict) -> dict:
    sizes = _sizes(checkpoint)
    return {"architectures": ["RWKV7ForCausalLM"], "model_type": "rwkv7", "vocab_size": sizes["vocab_size"],
            "num_hidden_layers": sizes["num_hidden_layers"], "hidden_size": sizes["hidden_size"],
            "head_size": sizes["head_dim"], "tie_word_embeddings": False}


# ----------------------------------------------------------------------------- files


_SAFETENSORS_TYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


def _raw(values: np.ndarray, dtype: str) -> bytes:
    return pw.encode(np.asarray(values, dtype=np.float32), dtype).astype(
        {"bfloat16": "<u2", "float16": "<f2", "float32": "<f4"}[dtype]).tobytes()


def save_safetensors(path, tensors: dict, dtype: str = "bfloat16") -> None:
    """A safetensors file of float tensors stored as ``dtype`` (bf16 as Hugging Face ships)."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, value in tensors.items():
        raw = _raw(value, dtype)
        header[name] = {"dtype": _SAFETENSORS_TYPES[dtype], "shape": list(np.shape(value)),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def write_hf_folder(folder, tensors: dict, config: dict | None, container: str = "safetensors",
                    dtype: str = "bfloat16", shards: int = 1) -> Path:
    """A Hugging Face model folder: config.json (unless None) and the tensors as
    ``model.safetensors`` (or ``shards`` files with ``model.safetensors.index.json``), or as
    ``pytorch_model.bin`` (``container="pytorch"``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    if container == "pytorch":
        pw.write_pth(folder / "pytorch_model.bin", {n: pw.tensor(v, dtype) for n, v in tensors.items()})
        return folder
    if shards == 1:
        save_safetensors(folder / "model.safetensors", tensors, dtype)
        return folder
    names = list(tensors)
    weight_map = {}
    for k in range(shards):
        shard = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = names[k::shards]
        save_safetensors(folder / shard, {n: tensors[n] for n in part}, dtype)
        weight_map.update({n: shard for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder
