"""Chat with an RWKV model in the terminal.

A drop-in for rwkv.cpp's python/chat_with_bot.py, with its arguments:

    python python/chat_with_bot.py C:\\rwkv.cpp-169M.bin [tokenizer]

The tokenizer is auto (chosen from the model's vocabulary size), 20B or world. Without a model
path it chats with rwkvcpp's built-in model. The settings below are the script's, as in
rwkv.cpp; it is a thin wrapper over ``rwkvcpp chat`` (which has flags for all of them), and the
same commands work: +reset, +gen, +i, +qa, +++, ++ and +help.
"""

import argparse
import sys

try:
    from rwkvcpp.cli import main as rwkvcpp_main
except ImportError as e:  # a checkout without the package installed
    sys.exit(f"chat_with_bot.py needs the rwkvcpp package (pip install rwkvcpp, or pip install -e . here): {e}")

# ======================================== Script settings ========================================

# English or Chinese.
LANGUAGE: str = "English"
# QA: talk to an AI assistant. Chat: a conversation between two friends (needs a large model).
PROMPT_TYPE: str = "QA"

MAX_GENERATION_LENGTH: int = 250

TEMPERATURE: float = 0.8
TOP_P: float = 0.5
PRESENCE_PENALTY: float = 0.2
FREQUENCY_PENALTY: float = 0.2

# =================================================================================================


def parse_args():
    parser = argparse.ArgumentParser(description="Provide terminal-based chat interface for RWKV model")
    parser.add_argument("model_path", nargs="?", help="Path to RWKV model in rwkv.cpp format (default: the built-in model)")
    parser.add_argument("-ngl", "--num_gpu_layers", type=int, default=0, help="Accepted for compatibility; rwkvcpp runs on the CPU")
    parser.add_argument("tokenizer", nargs="?", default="auto", help="Tokenizer to use: auto (guess from n_vocab), 20B, world")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the engine's choice)")
    return parser.parse_args()


def tokenizer_flags(name: str) -> list:
    return [] if name.lower() == "auto" else ["--tokenizer", name.lower()]


def main() -> int:
    args = parse_args()
    argv = ["chat"] + ([args.model_path] if args.model_path else [])
    argv += ["--prompt", f"{LANGUAGE}-{PROMPT_TYPE}", "--max-tokens", str(MAX_GENERATION_LENGTH)]
    argv += ["--temperature", str(TEMPERATURE), "--top-p", str(TOP_P)]
    argv += ["--presence-penalty", str(PRESENCE_PENALTY), "--frequency-penalty", str(FREQUENCY_PENALTY)]
    argv += tokenizer_flags(args.tokenizer)
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return rwkvcpp_main(argv)


if __name__ == "__main__":
    sys.exit(main())
