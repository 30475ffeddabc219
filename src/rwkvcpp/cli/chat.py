"""``rwkvcpp chat [MODEL] [--prompt PRESET_OR_JSON]``: chat with a model in the terminal.

Replies stream to stdout; notes go to stderr. Works with piped input too (each line is a
message) and exits 0 at the end of the input.
"""

from __future__ import annotations

import sys

from ..chat import DEFAULT_PRESET, ChatSession, Preset, preset_names
from ..sampling import CHAT_DEFAULTS
from . import _common

DEFAULTS = {**CHAT_DEFAULTS, "max_tokens": 250}


def add_arguments(parser) -> None:
    _common.add_model_arguments(parser)
    parser.add_argument(
        "--prompt", metavar="PRESET_OR_JSON", default=DEFAULT_PRESET,
        help=f"prompt preset ({', '.join(preset_names())}; default {DEFAULT_PRESET}), a JSON file or JSON text "
             f"with the keys user, bot, separator and intro",
    )
    _common.add_state_argument(parser)
    _common.add_sampling_arguments(parser, DEFAULTS, max_tokens_flags=("--max-tokens", "-n"))


def run(args) -> int:
    # A line of invalid UTF-8 (a paste from another encoding) becomes U+FFFD, not the end of the chat.
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="replace")
    preset = Preset.load(args.prompt)  # before loading the model: a typo fails fast
    params = _common.sampling_params(args)
    model = _common.load_model(args)
    session = ChatSession(model, preset, params, initial_state=_common.load_start_state(model, args.state))
    return session.run()
