"""Converts an rwkvcpp / rwkv.cpp RWKV-7 model file (.bin) to a GGUF file that llama.cpp runs.

    python benchmarks/to_gguf.py model.bin model.gguf

For same-machine speed comparisons with llama.cpp (see peer_llamacpp.py), so every matrix keeps
its block format and its bytes: FP16, Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 blocks of the .bin format
are ggml's own, and both engines then read the same bytes per token. Only names, shapes and
metadata change; the few shape changes are reshapes of the same data:

  emb.weight -> token_embd, head.weight -> output, ln_out -> output_norm,
  blocks.0.ln0 -> token_embd_norm, lnX -> attn_norm / attn_norm_2, att.ln_x -> time_mix_ln,
  att.x_rwkvag (6,1,C) -> time_mix_lerp_fused (6,1,1,C), same order r w k v a g,
  att.{w0,a0,v0,k_k,k_a} (1,1,C) and att.r_k (H,64) become (C),
  the LoRA matrices w1..g2 are already stored the way llama.cpp multiplies them.

llama.cpp computes the decay as exp(-e^-0.5 * sigmoid(w)), which is the same function as the
official exp(-exp(-softplus(-w) - 0.5)), so w0 is copied unchanged. llama.cpp also wants v0/v1/v2
in layer 0, which RWKV-7 does not use there; like llama.cpp's own converter we store copies of
a0/a1/a2 under those names (never read when running; they only grow the file).

The vocabulary is the RWKV World one that rwkvcpp ships, written for llama.cpp's "rwkv"
tokenizer: token texts are the token bytes with backslash escapes (\\xhh, \\\\), id 0 is the
end-of-text token, ids past the vocabulary file are unused padding up to the model's n_vocab.

Needs the `gguf` package (pip install gguf), a development tool only.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from rwkvcpp import format as F
from rwkvcpp.arch import detect
from rwkvcpp.tokenizer import world

try:
    import gguf
except ImportError:  # pragma: no cover - message for people running the script
    sys.exit("benchmarks/to_gguf.py needs the gguf package: pip install gguf")

Q = gguf.GGMLQuantizationType
# .bin type id -> (ggml type, llama.cpp file type). The ids differ (ggml's Q5_0 is 6, the .bin's
# is 7, ...), the blocks do not.
TYPES = {
    F.FP32: (Q.F32, gguf.LlamaFileType.ALL_F32),
    F.FP16: (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    F.Q4_0: (Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    F.Q4_1: (Q.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
    F.Q5_0: (Q.Q5_0, gguf.LlamaFileType.MOSTLY_Q5_0),
    F.Q5_1: (Q.Q5_1, gguf.LlamaFileType.MOSTLY_Q5_1),
    F.Q8_0: (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}

# Per-layer tensors: .bin name after "blocks.N." -> llama.cpp name after "blk.N.".
LAYER_NAMES = {
    "ln1.weight": "attn_norm.weight",
    "ln1.bias": "attn_norm.bias",
    "ln2.weight": "attn_norm_2.weight",
    "ln2.bias": "attn_norm_2.bias",
    "att.x_rwkvag": "time_mix_lerp_fused.weight",
    "att.k_k": "time_mix_k_k.weight",
    "att.k_a": "time_mix_k_a.weight",
    "att.r_k": "time_mix_r_k.weight",
    "att.receptance.weight": "time_mix_receptance.weight",
    "att.key.weight": "time_mix_key.weight",
    "att.value.weight": "time_mix_value.weight",
    "att.output.weight": "time_mix_output.weight",
    "att.ln_x.weight": "time_mix_ln.weight",
    "att.ln_x.bias": "time_mix_ln.bias",
    "ffn.x_k": "channel_mix_lerp_k.weight",
    "ffn.key.weight": "channel_mix_key.weight",
    "ffn.value.weight": "channel_mix_value.weight",
    **{f"att.{p}{i}": f"time_mix_{p}{i}.weight" for p in "wavg" for i in "012" if (p, i) != ("g", "0")},
}
GLOBAL_NAMES = {
    "emb.weight": "token_embd.weight",
    "blocks.0.ln0.weight": "token_embd_norm.weight",
    "blocks.0.ln0.bias": "token_embd_norm.bias",
    "ln_out.weight": "output_norm.weight",
    "ln_out.bias": "output_norm.bias",
    "head.weight": "output.weight",
}


def gguf_name(name: str) -> str:
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] in LAYER_NAMES:
        return f"blk.{parts[1]}.{LAYER_NAMES[parts[2]]}"
    raise ValueError(f"tensor {name!r} has no llama.cpp rwkv7 counterpart")


def llama_shape(name: str, shape: tuple[int, ...], n_embed: int) -> tuple[int, ...]:
    """The PyTorch-order shape llama.cpp expects for a .bin tensor (same element count)."""
    if name.endswith("att.x_rwkvag"):
        return (shape[0], 1, 1, n_embed)
    if name.endswith(("att.w0", "att.a0", "att.v0", "att.k_k", "att.k_a", "att.r_k")):
        return (n_embed,)
    return shape  # ffn.x_k stays (1, 1, C)


def world_vocab(n_vocab: int) -> tuple[list[bytes], list[int]]:
    """Token texts and types of the World vocabulary, escaped for llama.cpp's rwkv tokenizer."""
    tok = world.WorldTokenizer(n_vocab=n_vocab)
    used = {tid for tid in range(1, n_vocab) if tok.token_bytes(tid)}
    texts, types = [b"<|endoftext|>"], [gguf.TokenType.CONTROL]
    for tid in range(1, n_vocab):
        if tid in used:
            raw = tok.token_bytes(tid)
            # Printable ASCII stays, backslash and everything else becomes an escape: llama.cpp
            # undoes "\\" + char and lowercase "\xhh" only.
            texts.append("".join(chr(b) if 32 <= b < 127 and b != 92 else f"\\x{b:02x}" for b in raw).encode())
            types.append(gguf.TokenType.NORMAL)
        else:
            texts.append(f"<unused{tid}>".encode())
            types.append(gguf.TokenType.UNUSED)
    return texts, types


def convert(src: str, dst: str, quiet: bool = False) -> None:
    header = F.read_header(src)
    records = {r.name: r for r in F.load_records(src)}
    arch = detect(records)
    if arch is None or arch.name != "v7":
        raise ValueError(
            f"{src}: RWKV {arch.name if arch else '(unknown)'} model; only RWKV v7 files can be converted to GGUF: "
            "llama.cpp has no v4/v5 architecture, and its rwkv6 wants another layout (fused, reordered mixes) "
            "not written here")
    C, L = header.n_embed, header.n_layer
    if "blocks.0.att.g1" not in records or records["blocks.0.att.x_rwkvag"].shape[0] != 6:
        raise ValueError(f"{src}: v7 model without the output gate (g1/g2); llama.cpp's rwkv7 needs it")
    if header.n_vocab <= 65529:
        raise ValueError(f"{src}: n_vocab {header.n_vocab} is too small for the RWKV World vocabulary "
                         "(65530 ids) that the GGUF file gets; only World-vocabulary models are supported")

    def rank(p: str) -> int:  # LoRA size; w1 etc. are stored (rank, C) in PyTorch order
        layer = 1 if p == "v" else 0
        return records[f"blocks.{layer}.att.{p}1"].shape[0] if L > layer else rank("a")

    writer = gguf.GGUFWriter(dst, "rwkv7")
    writer.add_name(os.path.splitext(os.path.basename(src))[0])
    writer.add_context_length(1 << 20)  # no real limit
    writer.add_embedding_length(C)
    writer.add_block_count(L)
    writer.add_feed_forward_length(records["blocks.0.ffn.key.weight"].shape[0])
    writer.add_head_count(0)  # a key llama.cpp requires; rwkv7 uses wkv_head_size instead
    writer.add_wkv_head_size(arch.file_heads({name: r.shape for name, r in records.items()}, C)[1])
    writer.add_layer_norm_eps(1e-5)  # RWKV's LayerNorm eps (ln_x uses 64e-5, built into llama.cpp)
    writer.add_decay_lora_rank(rank("w"))
    writer.add_iclr_lora_rank(rank("a"))
    writer.add_value_residual_mix_lora_rank(rank("v"))
    writer.add_gate_lora_rank(rank("g"))
    writer.add_file_type(TYPES[header.data_type][1])

    texts, types = world_vocab(header.n_vocab)
    writer.add_tokenizer_model("rwkv")
    writer.add_token_list(texts)
    writer.add_token_types(types)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)

    data = F.open_mmap(src)

    def add(name: str, rec: F.Record) -> None:
        ggml_type = TYPES[rec.type_id][0]
        shape = llama_shape(rec.name, rec.shape, C)
        array = F.read_tensor(data, rec)
        if rec.type_id in (F.FP32, F.FP16):
            writer.add_tensor(name, array.reshape(shape))
        else:  # raw blocks: rows of bytes, gguf turns the byte shape back into elements
            row_bytes = shape[-1] // F.TYPES[rec.type_id].block_len * F.TYPES[rec.type_id].block_bytes
            writer.add_tensor(name, array.reshape(*shape[:-1], row_bytes), raw_dtype=ggml_type)

    for rec in records.values():
        add(gguf_name(rec.name), rec)
        if rec.name in ("blocks.0.att.a0", "blocks.0.att.a1", "blocks.0.att.a2") and "blocks.0.att.v0" not in records:
            add(f"blk.0.time_mix_v{rec.name[-1]}.weight", rec)  # unused layer-0 v0/v1/v2

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=not quiet)
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="RWKV-7 .bin model (rwkvcpp / rwkv.cpp format)")
    parser.add_argument("dst", help="GGUF file to write")
    args = parser.parse_args()
    try:
        convert(args.src, args.dst)
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
