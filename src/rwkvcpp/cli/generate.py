"""``rwkvcpp generate [MODEL] [--prompt TEXT | --prompt-file F] [-n MAX_TOKENS]``: continue a
prompt, streaming the text to stdout.

Without --prompt or --prompt-file the prompt is read from stdin when it is not a terminal.
Generation stops after MAX_TOKENS tokens, at a --stop string, or at the end-of-text token of
World and 20B models.
"""

from __future__ import annotations

import os
import sys

from . import CommandError, _common

DEFAULTS = {
    "temperature": 0.8,
    "top_p": 0.5,
    "top_k": 0,
    "min_p": 0.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "penalty_decay": 1.0,
    "max_tokens": 200,
}


def add_arguments(parser) -> None:
    _common.add_model_arguments(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", metavar="TEXT", help="the text to continue (\\n means a newline)")
    source.add_argument("--prompt-file", metavar="FILE", help="read the prompt from a UTF-8 file ('-': stdin)")
    parser.add_argument("--echo", action="store_true", help="print the prompt before the generated text")
    _common.add_state_argument(parser)
    parser.add_argument("--stats", action="store_true", help="print token counts and speed to stderr at the end")
    _common.add_sampling_arguments(parser, DEFAULTS)


def _same_stream(a, b) -> bool:
    try:
        return os.path.samestat(os.fstat(a.fileno()), os.fstat(b.fileno()))
    except (OSError, ValueError, AttributeError):
        return False


def _read_prompt(args) -> str:
    if args.prompt is not None:
        return args.prompt.replace("\\n", "\n")
    if args.prompt_file == "-" or (args.prompt_file is None and not sys.stdin.isatty()):
        return sys.stdin.read()
    if args.prompt_file is None:
        raise CommandError("give the text to continue with --prompt TEXT or --prompt-file FILE (or pipe it in)")
    with open(args.prompt_file, encoding="utf-8") as f:
        return f.read()


def run(args) -> int:
    from ..completion import end_tokens
    from ..generate import Generator

    prompt = _read_prompt(args)
    if not prompt:
        raise CommandError("the prompt is empty")
    model = _common.load_model(args)
    start = _common.load_start_state(model, args.state)
    generator = Generator(model)
    params = _common.sampling_params(args, stop_tokens=end_tokens(generator.tokenizer))

    out = sys.stdout
    shown = _common.terminal_safe if out.isatty() else str  # a pipe gets the text as it is
    if args.echo:
        out.write(shown(prompt))
        out.flush()
    result = None
    last_text = prompt
    for chunk in generator.stream(prompt, params, start):
        if chunk.text:
            out.write(shown(chunk.text))
            out.flush()
            last_text = chunk.text
        result = chunk.result
    if out.isatty() and not last_text.endswith("\n"):
        out.write("\n")
    out.flush()
    if args.stats:
        if not last_text.endswith("\n") and not out.isatty() and _same_stream(out, sys.stderr):
            print(file=sys.stderr)  # `2>&1`: the stats on their own line, not run into the text
        print(
            f"{result.prompt_tokens} prompt tokens in {result.prompt_seconds:.2f} s, "
            f"{result.completion_tokens} generated in {result.completion_seconds:.2f} s "
            f"({result.tokens_per_second:.1f} tokens/s); finish reason: {result.finish_reason}",
            file=sys.stderr,
        )
    return 0
