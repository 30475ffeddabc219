"""Converts an RWKV checkpoint (PyTorch .pth, safetensors or a Hugging Face folder) into an
rwkv.cpp model file.

A drop-in for rwkv.cpp's python/convert_pytorch_to_ggml.py, with its arguments:

    python python/convert_pytorch_to_ggml.py ~/RWKV-4-Pile-169M-20220807-8023.pth ~/rwkv-169M-FP16.bin FP16

data_type is FP16, FP32, float16 or float32. Unlike the original it needs no torch, never runs
code from the checkpoint, and holds one tensor in memory at a time. It is a thin wrapper over
``rwkvcpp.convert``; the ``rwkvcpp convert`` command does the same with a progress bar
and can quantize in the same step.
"""

import argparse
import sys

try:
    from rwkvcpp import convert
except ImportError as e:  # a checkout without the package installed
    sys.exit(f"convert_pytorch_to_ggml.py needs the rwkvcpp package (pip install rwkvcpp, or pip install -e . here): {e}")

DATA_TYPES = {"FP16": "FP16", "FP32": "FP32", "float16": "FP16", "float32": "FP32"}


def parse_args():
    parser = argparse.ArgumentParser(description="Convert an RWKV model checkpoint into an rwkv.cpp compatible file")
    parser.add_argument("src_path", help="Path to PyTorch checkpoint file")
    parser.add_argument("dest_path", help="Path to rwkv.cpp checkpoint file, will be overwritten")
    parser.add_argument("data_type", help="Data type, FP16 or FP32", choices=list(DATA_TYPES), default="FP16")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    try:
        convert(args.src_path, args.dest_path, dtype=DATA_TYPES[args.data_type], log=print)
    except (ValueError, OSError) as e:
        print(f"convert_pytorch_to_ggml.py: error: {e}", file=sys.stderr)
        return 2
    print("Done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
