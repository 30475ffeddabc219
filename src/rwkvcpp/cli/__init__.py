"""The `rwkvcpp` command line. Each command lives in its own module with two functions:
``add_arguments(parser)`` and ``run(args) -> int``. Bad input exits with code 2 and a one-line
message on stderr; nothing is left half-written."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

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
    "batch": "embed, score or continue every record of a corpus, with many workers",
}


class CommandError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class Terminated(BaseException):
    """SIGTERM, raised so that a command writing a file removes its temporary file on the way out."""


# The commands that write files; the others keep the default SIGTERM (the server has its own).
_WRITERS = ("convert", "quantize", "merge-lora")


def _raise_terminated(signum, frame):
    raise Terminated()


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


DEBUG_HELP = "show the full traceback of an error (default: one line)"


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="rwkvcpp", description="Run RWKV language models fast on CPUs.")
    parser.add_argument("--version", action="version", version=f"rwkvcpp {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    for name, help_text, module in _available():
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        module.add_arguments(p)
        # also after the command; SUPPRESS keeps a --debug given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        p.set_defaults(_run=module.run)
    return parser


# Errors that come from what the user gave (a file, a flag, a missing optional package), not from a bug.
USER_ERRORS = (CommandError, ValueError, OSError, ImportError, LookupError)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in _WRITERS or threading.current_thread() is not threading.main_thread():
        return _run(args)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("\nterminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except BrokenPipeError:
        # The reader went away (`rwkvcpp info m.bin | head`): stop quietly as Unix tools do, and keep
        # Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what the shell reports for a tool killed by a closed pipe
    except Exception as e:
        if args.debug:
            raise
        from ..model import RWKVError  # the engine's refusals of a model file or an input

        user_error = isinstance(e, (*USER_ERRORS, RWKVError))
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        if not user_error:
            message = f"{type(e).__name__}: {message} (rerun with --debug for the traceback)"
        print(f"rwkvcpp {args.command}: error: {message}", file=sys.stderr)
        return 2 if user_error else 1
