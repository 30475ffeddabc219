"""Measures perplexity and speed of an RWKV model on a text file.

rwkv.cpp's python/measure_pexplexity.py (spelled so there), with its arguments:

    python python/measure_perplexity.py C:\\rwkv.cpp-169M.bin C:\\text.txt [ignore_first_n_tokens] [token_limit] [tokenizer]

ignore_first_n_tokens (default 0) tokens at the start are read but not scored; token_limit
(default -1: all) cuts the text; the tokenizer is auto (chosen from the model's vocabulary
size), 20B or world. Perplexity is exp() of the mean cross-entropy loss. A thin wrapper over
``rwkvcpp perplexity``, which reads the whole text as one context in sequence mode.
"""

import argparse
import sys

try:
    from rwkvcpp.cli import main as rwkvcpp_main
except ImportError as e:  # a checkout without the package installed
    sys.exit(f"measure_perplexity.py needs the rwkvcpp package (pip install rwkvcpp, or pip install -e . here): {e}")


def main() -> int:
    parser = argparse.ArgumentParser(description="Measure perplexity and per-token latency of an RWKV model on a given text file")
    parser.add_argument("model_path", help="Path to model checkpoint file")
    parser.add_argument("text_path", help="Path to text file in UTF-8 encoding")
    parser.add_argument("ignore_first_n_tokens", nargs="?", type=int, default=0, help="How many tokens should be skipped before loss is measured")
    parser.add_argument("token_limit", nargs="?", type=int, default=-1, help="How many tokens to process; set to -1 to process all text")
    parser.add_argument("tokenizer", nargs="?", default="auto", help="Tokenizer to use: auto (guess from n_vocab), 20B, world")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the engine's choice)")
    args = parser.parse_args()

    if args.token_limit != -1 and args.token_limit <= 0:
        parser.error("token_limit must be -1 or a positive number")
    argv = ["perplexity", args.model_path, args.text_path, "--ignore-first", str(args.ignore_first_n_tokens)]
    if args.token_limit != -1:
        argv += ["--limit", str(args.token_limit)]
    if args.tokenizer.lower() != "auto":
        argv += ["--tokenizer", args.tokenizer.lower()]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return rwkvcpp_main(argv)


if __name__ == "__main__":
    sys.exit(main())
