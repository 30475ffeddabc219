"""Generates some text with an RWKV model: the smallest example of the rwkvcpp API.

A drop-in for rwkv.cpp's python/inference_example.py, with its arguments:

    python python/inference_example.py C:\\rwkv.cpp-169M-Q5_1.bin [tokenizer]

The tokenizer is auto (chosen from the model's vocabulary size), 20B or world.
"""

import argparse
import sys

try:
    from rwkvcpp import Model
except ImportError as e:  # a checkout without the package installed
    sys.exit(f"inference_example.py needs the rwkvcpp package (pip install rwkvcpp, or pip install -e . here): {e}")


def main() -> int:
    parser = argparse.ArgumentParser(description="Generate some text with an RWKV model")
    parser.add_argument("model_path", help="Path to RWKV model in rwkv.cpp format")
    parser.add_argument("-ngl", "--num_gpu_layers", type=int, default=0, help="Accepted for compatibility; rwkvcpp runs on the CPU")
    parser.add_argument("tokenizer", nargs="?", default="auto", help="Tokenizer to use: auto (guess from n_vocab), 20B, world")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the engine's choice)")
    args = parser.parse_args()

    try:
        # Load the model (memory-mapped: fast) and pick its tokenizer.
        model = Model(args.model_path, threads=args.threads)
        if args.tokenizer.lower() != "auto":
            model.tokenizer = args.tokenizer.lower()

        prompt = "Once upon a time,"
        print(prompt, end="", flush=True)

        # The prompt is read in one pass, then tokens are sampled one by one and printed as they come.
        for piece in model.generate(prompt, max_tokens=32, temperature=0.8, top_p=0.5, stream=True):
            print(piece, end="", flush=True)
        print()
    except (ValueError, OSError) as e:
        print(f"inference_example.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
