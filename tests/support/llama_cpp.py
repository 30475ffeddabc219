"""llama.cpp's ``convert_hf_to_gguf.py`` for tests: finding it, the Hugging Face RWKV-6 folders it
reads (RWKV-7's fla folders come from tests/support/hf_rwkv7.py), and running it.

The converter ships in the llama-cpp-python sdist (``vendor/llama.cpp``) with its own gguf-py;
``RWKVCPP_LLAMA_CPP_DIR`` names that folder (.ci/run unpacks it). It imports torch and
transformers. For RWKV models it also reads ``rwkv_vocab_v20230424.txt`` from the model folder,
one token per line after id 0 and ``vocab_size`` tokens in all: the tests copy the first
``n_vocab - 1`` lines of rwkvcpp's World vocabulary there.

The Hugging Face RWKV-6 layout (``Rwkv6ForCausalLM`` of the ``RWKV/v6-Finch-*-HF`` repositories,
the one llama.cpp's converter reads) is BlinkDL's checkpoint renamed, shapes and values unchanged:
``rwkv.embeddings``, ``rwkv.blocks.N.pre_ln`` (block 0), ``ln1``, ``ln2``, ``attention.*`` and
``feed_forward.*`` with v6's ``time_maa_*`` names kept, ``rwkv.ln_out``, ``head``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from rwkvcpp.tokenizer.world import VOCAB_FILE
from support.hf_rwkv7 import fla_config, save_safetensors, to_fla

ENV = "RWKVCPP_LLAMA_CPP_DIR"


def converter_dir():
    """The llama.cpp source folder holding convert_hf_to_gguf.py, or None (with the reason in
    ``missing_reason()``) when the converter cannot run here."""
    return None if missing_reason() else Path(os.environ[ENV])


def missing_reason():
    folder = os.environ.get(ENV)
    if not folder:
        return f"{ENV} is not set (the llama.cpp sources with convert_hf_to_gguf.py; .ci/run sets it)"
    if not (Path(folder) / "convert_hf_to_gguf.py").is_file():
        return f"{ENV}={folder} has no convert_hf_to_gguf.py"
    for module in ("torch", "transformers"):
        if importlib.util.find_spec(module) is None:
            return f"llama.cpp's converter needs {module}, which is not installed"
    return None


def to_hf_rwkv6(checkpoint: dict) -> dict:
    """The Hugging Face names of a native RWKV-6 checkpoint."""
    parts = {"ln0": "pre_ln", "ln1": "ln1", "ln2": "ln2", "att": "attention", "ffn": "feed_forward"}
    out = {}
    for name, value in checkpoint.items():
        if name == "emb.weight":
            name = "rwkv.embeddings.weight"
        elif name.startswith("blocks."):
            _, layer, part, rest = name.split(".", 3)
            name = f"rwkv.blocks.{layer}.{parts[part]}.{rest}"
        elif name.startswith("ln_out."):
            name = "rwkv." + name
        out[name] = value
    return out


def hf_rwkv6_config(checkpoint: dict, rescale_every: int = 0) -> dict:
    n_vocab, n_embed = checkpoint["emb.weight"].shape
    n_head, head_size = checkpoint["blocks.0.att.time_faaaa"].shape
    n_layer = sum(1 for name in checkpoint if name.endswith(".ln1.weight"))
    return {"architectures": ["Rwkv6ForCausalLM"], "model_type": "rwkv6", "attention_hidden_size": int(n_embed),
            "head_size": int(head_size), "head_size_divisor": 8, "hidden_size": int(n_embed),
            "intermediate_size": int(checkpoint["blocks.0.ffn.key.weight"].shape[0]), "layer_norm_epsilon": 1e-5,
            "num_attention_heads": int(n_head), "num_hidden_layers": n_layer, "rescale_every": rescale_every,
            "tie_word_embeddings": False, "vocab_size": int(n_vocab), "bos_token_id": 0, "eos_token_id": 0}


def write_folder(folder, checkpoint: dict, arch: str, rescale_every: int = 0) -> Path:
    """The Hugging Face folder llama.cpp's converter reads for a native v6 or v7 checkpoint:
    config.json, model.safetensors (bf16, as published) and the vocabulary file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if arch == "v6":
        tensors, config = to_hf_rwkv6(checkpoint), hf_rwkv6_config(checkpoint, rescale_every)
    else:
        tensors, config = to_fla(checkpoint), fla_config(checkpoint)
    save_safetensors(folder / "model.safetensors", tensors)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    n_vocab = checkpoint["emb.weight"].shape[0]
    with open(VOCAB_FILE, encoding="utf-8") as f:
        lines = f.readlines()[:n_vocab - 1]
    (folder / "rwkv_vocab_v20230424.txt").write_text("".join(lines), encoding="utf-8")
    return folder


# One process runs the converter for every job: importing torch and transformers takes most of
# its time. Its RWKV classes gather the token-shift mixes of a layer in a class-level dict, which
# must start empty for each model.
_DRIVER = """
import json, runpy, sys
folder, jobs = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, folder)
converter = runpy.run_path(folder + "/convert_hf_to_gguf.py", run_name="llama_cpp_converter")
from conversion import rwkv
for model, out, outtype in jobs:
    rwkv.Rwkv6Model.lerp_weights.clear()
    rwkv.Rwkv7Model.lerp_weights.clear()
    sys.argv = ["convert_hf_to_gguf.py", model, "--outfile", out, "--outtype", outtype]
    converter["main"]()
"""


def convert(jobs: list) -> None:
    """Runs llama.cpp's converter on [(model folder, output .gguf, outtype)] (outtype f32, f16,
    bf16 or q8_0), in one process."""
    jobs = [[str(folder), str(out), outtype] for folder, out, outtype in jobs]
    run = subprocess.run([sys.executable, "-c", _DRIVER, str(converter_dir()), json.dumps(jobs)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed ({run.returncode}):\n{run.stderr[-3000:]}")
