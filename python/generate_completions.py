"""Generates several completions of one prompt and times them.

A drop-in for rwkv.cpp's python/generate_completions.py, with its arguments:

    python python/generate_completions.py C:\\rwkv.cpp-169M-Q5_1.bin [tokenizer]

The tokenizer is auto (chosen from the model's vocabulary size), 20B or world. The prompt is
read once; every completion starts from a copy of the state after it.
"""

import argparse
import sys
import time

try:
    from rwkvcpp.generate import Generator
    from rwkvcpp.model import Model
    from rwkvcpp.sampling import SamplingParams
except ImportError as e:  # a checkout without the package installed
    sys.exit(f"generate_completions.py needs the rwkvcpp package (pip install rwkvcpp, or pip install -e . here): {e}")

# ======================================== Script settings ========================================

prompt: str = """# rwkvcpp

rwkvcpp runs RWKV language models on the CPU. It reads the model files of rwkv.cpp, in FP32, \
FP16 and the quantized Q4, Q5 and Q8 formats, and"""

# How many completions to generate.
generation_count: int = 3
# Token count per single completion.
tokens_per_generation: int = 100

# Sampling settings.
temperature: float = 0.8
top_p: float = 0.5

# =================================================================================================


def main() -> int:
    parser = argparse.ArgumentParser(description="Generate completions from RWKV model based on a prompt")
    parser.add_argument("model_path", help="Path to RWKV model in rwkv.cpp format")
    parser.add_argument("-ngl", "--num_gpu_layers", type=int, default=0, help="Accepted for compatibility; rwkvcpp runs on the CPU")
    parser.add_argument("tokenizer", nargs="?", default="auto", help="Tokenizer to use: auto (guess from n_vocab), 20B, world")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the engine's choice)")
    args = parser.parse_args()

    try:
        print("Loading RWKV model")
        model = Model(args.model_path, threads=args.threads)
        if args.tokenizer.lower() != "auto":
            model.tokenizer = args.tokenizer.lower()
        generator = Generator(model)
        prompt_tokens = generator.encode(prompt)
        print(f"{len(prompt_tokens)} tokens in prompt")
        # Read the prompt once, keeping its last token to start each completion with.
        state = model.ingest(prompt_tokens[:-1]) if len(prompt_tokens) > 1 else None
        params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=tokens_per_generation)
        for generation in range(generation_count):
            print(f"\n--- Generation {generation} ---\n")
            print(prompt, end="[", flush=True)
            start = time.time()
            for chunk in generator.stream(prompt_tokens[-1:], params, state):
                print(chunk.text, end="", flush=True)
            delay = time.time() - start
            print("]\n\nTook %.3f sec, %d ms per token" % (delay, delay / tokens_per_generation * 1000))
    except (ValueError, OSError) as e:
        print(f"generate_completions.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
