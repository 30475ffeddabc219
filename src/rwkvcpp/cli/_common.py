"""Pieces shared by the text commands (chat, generate, perplexity): the model argument with its
built-in fallback, and the sampling flags."""

from __future__ import annotations

import json
import os
import re
import stat
import sys

from . import CommandError
from ._progress import Progress  # noqa: F401  (re-exported for the commands)

BUILTIN_NOTE = "a tiny byte-level model trained on Python's docs"
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


# -- model -----------------------------------------------------------------------------------


def add_model_arguments(parser) -> None:
    parser.add_argument(
        "model", metavar="MODEL", nargs="?",
        help=f"rwkv.cpp .bin model (default: the built-in model, {BUILTIN_NOTE})",
    )
    add_hf_argument(parser, "instead of MODEL, a model from the Hugging Face Hub (a .bin used as it is; a .pth, "
                            ".safetensors, GGUF or Transformers folder converted once; needs huggingface-hub)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads, at most 4 per core (default: one per core)")
    parser.add_argument("--no-mmap", action="store_true",
                        help="read the model into memory instead of mapping it: slower to load, but the model no "
                             "longer depends on the file (a mapped model stops with an error if its file is changed)")
    parser.add_argument(
        "--tokenizer", metavar="NAME_OR_PATH",
        help="world, 20b, bytes or a vocabulary file (default: chosen from the model's vocabulary size)",
    )


def add_hf_argument(parser, help: str) -> None:
    parser.add_argument("--hf", metavar="REPO[:FILE]", help=help)


def hub_file(spec: str, convert: bool) -> str:
    """The local path for ``--hf REPO[:FILE]``: the file as downloaded, or (``convert``) a ready
    .bin, converted once into the rwkvcpp cache. Errors are CommandErrors naming the spec."""
    from .. import hub

    try:
        repo_id, filename = hub.split_spec(spec)
        if not convert:
            return hub.download(repo_id, filename)
        return hub.resolve(repo_id, filename, log=lambda line: print(line, file=sys.stderr, flush=True))
    except (ImportError, ValueError, OSError) as e:
        raise CommandError(f"--hf {spec}: {e}") from None


def require_regular_file(path: str) -> None:
    """A CommandError for an input that exists but is a FIFO, device or socket: opening one to read
    it could block forever. Missing files and folders are left to the reader's own message."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"
        raise CommandError(f"{path}: a {kind}, not a regular file; give a model file")


def terminal_safe(text: str) -> str:
    """``text`` with control characters but newline and tab shown as escapes (``\\x1b``), for a
    terminal: a model's output must not be able to move the cursor, ring the bell or retitle
    the window."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def builtin_model_path() -> str:
    """The built-in model's file, or a CommandError saying it is not there."""
    try:
        from ..data import builtin_model_path as find
    except ImportError:
        raise CommandError(
            "no MODEL given, and this installation has no built-in model; pass the path of an rwkv.cpp .bin file"
        ) from None
    try:
        path = os.fspath(find())
    except (OSError, LookupError, ValueError) as e:
        raise CommandError(f"no MODEL given, so the built-in model was wanted, but: {e}") from None
    if not os.path.isfile(path):
        raise CommandError(f"no MODEL given, and the built-in model {path} is missing; pass the path of a .bin file")
    return path


def load_model(args):
    """The Model named by ``args.model`` or ``--hf`` (the built-in one when neither), with ``--tokenizer``
    applied."""
    from ..model import Model

    path = args.model
    if args.hf is not None:
        if path is not None:
            raise CommandError(f"give MODEL ({path}) or --hf {args.hf}, not both")
        path = hub_file(args.hf, convert=True)
    elif path is None:
        path = builtin_model_path()
        print(f"using the built-in model {path} ({BUILTIN_NOTE})", file=sys.stderr, flush=True)
    if args.threads is not None and args.threads < 1:
        raise CommandError(f"--threads must be at least 1, not {args.threads}")
    require_regular_file(path)
    model = Model(path, threads=args.threads, mmap=not getattr(args, "no_mmap", False))
    if args.tokenizer is not None:
        model.tokenizer = args.tokenizer
    return model


# -- starting state ----------------------------------------------------------------------------


def add_state_argument(parser) -> None:
    parser.add_argument(
        "--state", metavar="FILE",
        help="start from this state: one saved by Model.save_state, or a state-tuning file (.pth / .safetensors "
             "with blocks.N.att.time_state) (default: a fresh state)",
    )


def _is_saved_state(path: str) -> bool:
    """Whether ``path`` is a safetensors file whose metadata says it is an rwkvcpp saved state."""
    from ..state import FORMAT

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return False
        header_len = int.from_bytes(head, "little")
        if header_len > 100_000_000:
            return False
        try:
            header = json.loads(f.read(header_len))
        except (ValueError, UnicodeDecodeError):
            return False
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(metadata, dict) and metadata.get("format") == FORMAT


def load_start_state(model, path):
    """The state named by ``--state`` for ``model`` (None without the flag); told apart by content."""
    if path is None:
        return None
    if not os.path.isfile(path):
        raise CommandError(f"--state {path}: no such file")
    try:
        if _is_saved_state(path):
            return model.load_state(path)
    except (ValueError, LookupError, OSError) as e:
        raise CommandError(f"--state: {str(e).splitlines()[0]}") from None
    try:
        return model.load_tuned_state(path)
    except (ValueError, LookupError, OSError) as e:
        raise CommandError(f"--state: {str(e).splitlines()[0]} (read as a state-tuning file: it is not a state "
                           "saved by Model.save_state)") from None


# -- sampling --------------------------------------------------------------------------------

_SAMPLING_FLAGS = (
    # dest, flags, type, help
    ("temperature", ("--temperature", "--temp"), float, "randomness; 0 always picks the most likely token"),
    ("top_p", ("--top-p",), float, "keep the most likely tokens up to this total probability (1 = off)"),
    ("top_k", ("--top-k",), int, "keep only the K most likely tokens (0 = off)"),
    ("min_p", ("--min-p",), float, "drop tokens less likely than this times the most likely one (0 = off)"),
    ("presence_penalty", ("--presence-penalty",), float, "subtracted from tokens already generated"),
    ("frequency_penalty", ("--frequency-penalty",), float, "subtracted per earlier occurrence"),
    ("penalty_decay", ("--penalty-decay",), float, "occurrence counts shrink by this factor per token (1 = off)"),
)


def add_sampling_arguments(parser, defaults: dict, max_tokens_flags=("-n", "--max-tokens")) -> None:
    """The sampling flags, with this command's defaults shown in their help."""
    group = parser.add_argument_group("sampling")
    for dest, flags, type_, help_text in _SAMPLING_FLAGS:
        group.add_argument(*flags, dest=dest, type=type_, metavar="N" if type_ is int else "X", default=defaults.get(dest),
                           help=f"{help_text} (default {defaults.get(dest)})")
    group.add_argument("--seed", type=int, metavar="N", default=defaults.get("seed"),
                       help="random seed, for repeatable output (default: different each run)")
    group.add_argument("--stop", action="append", metavar="TEXT", default=[],
                       help="end the text where TEXT appears (may be repeated; \\n means a newline)")
    group.add_argument(*max_tokens_flags, dest="max_tokens", type=int, metavar="N",
                       default=defaults.get("max_tokens"),
                       help=f"most tokens to generate per reply (default {defaults.get('max_tokens')})")


def sampling_params(args, **extra):
    """SamplingParams from the parsed flags (a bad value becomes a one-line error)."""
    from ..sampling import SamplingParams

    if args.max_tokens is not None and args.max_tokens < 0:
        raise CommandError(f"--max-tokens must be 0 or more, not {args.max_tokens}")
    values = {dest: getattr(args, dest) for dest, *_ in _SAMPLING_FLAGS if getattr(args, dest) is not None}
    stops = tuple(s.replace("\\n", "\n") for s in args.stop)
    try:
        return SamplingParams(**values, stop=stops, seed=args.seed, max_tokens=args.max_tokens, **extra)
    except ValueError as e:
        # "top_p must be ..." -> "--top-p must be ...": name the flag the user typed.
        name, _, rest = str(e).partition(" ")
        if name in values or name == "seed":
            raise CommandError(f"--{name.replace('_', '-')} {rest}") from None
        raise CommandError(str(e)) from None
