"""Merges a LoRA checkpoint into an rwkv.cpp model file.

A drop-in for rwkv.cpp's python/merge_lora_into_ggml.py, with its arguments:

    python python/merge_lora_into_ggml.py ~/rwkv-169M-FP16.bin v4 ~/my-lora.pth 32 ~/rwkv-169M-lora.bin

The architecture version is v4, v5.1, v5.2, v6.0 or v7 (RWKV-7, which the original lacks); it
must be the model's. The LoRA is a .pth (or .safetensors) in the RWKV-LM-LoRA layout
(``...key.lora_A``/``lora_B``), trained with the given lora_alpha. The source must be FP32 or
FP16; quantize the result afterwards. Unlike the original it needs no torch and never runs code
from the LoRA file. A thin wrapper over ``rwkvcpp merge-lora``.
"""

import argparse
import sys

try:
    from rwkvcpp.cli import main as rwkvcpp_main
except ImportError as e:  # a checkout without the package installed
    sys.exit(f"merge_lora_into_ggml.py needs the rwkvcpp package (pip install rwkvcpp, or pip install -e . here): {e}")

ARCH_VERSIONS = ("v4", "v5.1", "v5.2", "v6.0", "v7")


def main() -> int:
    parser = argparse.ArgumentParser(description="Merge a LoRA checkpoint (.pth) into an rwkv.cpp model file")
    parser.add_argument("src_path", help="Path to the source rwkv.cpp model (FP32 or FP16)")
    parser.add_argument("rwkv_arch_version", choices=ARCH_VERSIONS, help="RWKV architecture version of the model")
    parser.add_argument("lora_path", help="Path to the LoRA checkpoint (.pth)")
    parser.add_argument("lora_alpha", type=float, help="The lora_alpha this LoRA was trained with")
    parser.add_argument("dest_path", help="Path to the merged rwkv.cpp model, will be overwritten")
    args = parser.parse_args()
    return rwkvcpp_main(["merge-lora", args.src_path, args.lora_path, args.dest_path,
                         "--alpha", repr(args.lora_alpha), "--arch", args.rwkv_arch_version])


if __name__ == "__main__":
    sys.exit(main())
