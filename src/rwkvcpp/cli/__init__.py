"""The `rwkvcpp` command line. Each command lives in its own module with two functions:
``add_arguments(parser)`` and ``run(args) -> int``. Bad input exits with code 2 and a one-line
message on stderr; nothing is left half-written."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "convert": "convert a .pth / .safetensors / Hugging Face checkpoint or a GGUF to a .bin model, or a model to GGUF",
    "quantize": "quantize an FP32/FP16 .bin model to Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K or Q5_K",
    "merge-lora": "merge a LoRA checkpoint into an FP32/FP16 .bin model",
    "info": "print the header, architecture, sizes and tensors of a model or checkpoint",
    "chat": "chat with a model in the terminal",
    "generate": "continue a prompt",
    "perplexity": "measure perplexity and speed on a text file",
    "bench": "measure decoding and prompt speed",
    "serve": "serve an OpenAI-compatible HTTP API",
}


class CommandError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _available():
    for name, help_text in COMMANDS.items():
        module_name = f"rwkvcpp.cli.{name.replace('-', '_')}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:
                continue  # command not built yet in this version
            raise
        yield name, help_text, module


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rwkvcpp", description="Run RWKV language models fast on CPUs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text, module in _available():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, OSError) as e:
        print(f"rwkvcpp {args.command}: error: {e}", file=sys.stderr)
        return 2
