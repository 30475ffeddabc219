"""A terminal chat with a model, after rwkv.cpp's chat_with_bot.py and ChatRWKV.

The conversation is plain text in the shape RWKV chat models are trained on::

    <intro>

    User: first message

    Assistant: first reply

    User: second message

    Assistant:

The session keeps the model state at the end of the conversation, so each turn evaluates only
the new text. A reply ends when the model starts the user's next turn (the stop string
``"\\n\\nUser:"``), at an end-of-text token, or after ``max_tokens``.

Prompt presets are JSON files in ``rwkvcpp/prompts/`` (``English-Chat``, ``English-QA``,
``Chinese-Chat``, ``Chinese-QA``) with the keys ``user``, ``bot``, ``separator`` (":") and
``intro``; rwkv.cpp's prompt files (``assistant`` and ``prompt`` keys) are read too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, TextIO, Union

from ._typing import FloatArray, StrPath
from .completion import end_tokens
from .generate import Generator
from .sampling import SamplingParams

if TYPE_CHECKING:
    from .generate import Generation
    from .model import Model
    from .tokenizer import Tokenizer

__all__ = ["ChatSession", "Preset", "preset_names", "HELP"]

PROMPTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts")
DEFAULT_PRESET = "English-QA"

HELP = """\
Commands:
  +help          this list
  +reset         forget the conversation (back to the preset's intro)
  +gen TEXT      free continuation of TEXT, without the conversation
  +i TEXT        follow an instruction: "Instruction: TEXT / Response:", without the conversation
  +qa TEXT       answer a question from the intro alone, without the chat history
  +++            continue the last reply
  ++             retry the last reply (a new draw, from the state before it)
Anything else is a chat message; write \\n for a line break inside it.
Ctrl-C stops a reply; Ctrl-C or Ctrl-D (end of input) at the prompt quits.
"""

# Text of the conversation kept to decide how the next turn joins on.
_TAIL_CHARS = 64


@dataclass(frozen=True)
class Preset:
    """Who talks in a chat, and the text that sets the scene."""

    user: str
    bot: str
    intro: str = ""
    separator: str = ":"
    name: str = ""

    def __post_init__(self) -> None:
        for field in ("user", "bot"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value.strip() or "\n" in value:
                raise ValueError(f"prompt preset: {field} must be a non-empty one-line name, got {value!r}")
        if not isinstance(self.intro, str) or not isinstance(self.separator, str):
            raise ValueError("prompt preset: intro and separator must be strings")

    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str = "") -> Preset:
        if not isinstance(data, dict):
            raise ValueError(f"prompt preset {name or ''}: expected a JSON object, got {type(data).__name__}")
        known = {"user", "bot", "assistant", "separator", "intro", "prompt", "name"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"prompt preset {name}: unknown key(s) {', '.join(unknown)}; expected user, bot, separator, intro")
        bot = data.get("bot", data.get("assistant"))
        if "user" not in data or bot is None:
            raise ValueError(f"prompt preset {name}: needs 'user' and 'bot' names")
        intro = data.get("intro", data.get("prompt", ""))
        return cls(user=data["user"], bot=bot, intro=intro, separator=data.get("separator", ":"),
                   name=data.get("name", name))

    @classmethod
    def load(cls, spec: Union[StrPath, dict[str, Any], None] = None) -> Preset:
        """A preset by name (``English-QA``; any case), from a JSON file, or from JSON text."""
        if spec is None:
            spec = DEFAULT_PRESET
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        spec = os.fspath(spec)
        if spec.lstrip().startswith("{"):
            try:
                return cls.from_dict(json.loads(spec), "(inline JSON)")
            except json.JSONDecodeError as e:
                raise ValueError(f"prompt preset: not valid JSON: {e}") from None
        path = spec
        if not os.path.isfile(path):
            by_name = {n.lower(): n for n in preset_names()}
            key = spec.lower()[:-5] if spec.lower().endswith(".json") else spec.lower()
            if key not in by_name:
                raise ValueError(
                    f"unknown prompt preset {spec!r}: give one of {', '.join(preset_names())}, "
                    f"or a JSON file with user, bot, separator and intro"
                )
            path = os.path.join(PROMPTS_DIR, by_name[key] + ".json")
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"prompt preset {path}: not valid JSON: {e}") from None
        return cls.from_dict(data, os.path.splitext(os.path.basename(path))[0])

    def turn(self, message: str) -> str:
        """A user turn and the start of the bot's answer."""
        return f"{self.user}{self.separator} {message}\n\n{self.bot}{self.separator}"

    @property
    def stop(self) -> str:
        """The start of the user's next turn, which ends a reply."""
        return f"\n\n{self.user}{self.separator}"


def preset_names() -> list[str]:
    """Names of the built-in prompt presets."""
    try:
        files = os.listdir(PROMPTS_DIR)
    except OSError:
        return []
    return sorted(f[:-5] for f in files if f.endswith(".json"))


@dataclass
class _Reply:
    """What is needed to continue (+++) or redo (++) the last reply."""

    kind: str  # "chat" (part of the conversation), "qa", "free"
    state_before: Optional[FloatArray]  # None: a fresh state
    logits_before: Optional[FloatArray]  # with an empty prompt: the logits that go with state_before
    tail_before: str  # the end of the conversation text at state_before (for "chat")
    prompt: list[int]  # tokens evaluated before the reply
    reply: list[int]  # the reply's tokens as shown (without a stop string)
    stop: tuple[str, ...]
    label: bool  # print "Bot:" before it
    result: Optional[Generation]  # the Generation, None when stopped with Ctrl-C


class ChatSession:
    """A conversation with ``model``: feed it lines with :meth:`handle`, or run the whole loop
    over a text stream with :meth:`run`. Replies are written to ``out`` as they are generated,
    notes to ``err``.

    ``params`` are the sampling settings of every reply (their ``stop`` strings are added to
    the chat's own). With a ``seed``, reply *n* uses ``seed + n``, so a session is repeatable
    and ``++`` still gives a new draw. ``initial_state`` (a state array) is where the
    conversation starts, before the preset's intro; None is a fresh state.
    """

    def __init__(
        self,
        model: Model,
        preset: Union[Preset, StrPath, dict[str, Any], None] = None,
        params: Optional[SamplingParams] = None,
        *,
        tokenizer: Union[Tokenizer, StrPath, None] = None,
        out: Optional[TextIO] = None,
        err: Optional[TextIO] = None,
        initial_state: Optional[FloatArray] = None,
    ):
        self.model = model
        self.preset = preset if isinstance(preset, Preset) else Preset.load(preset)
        self.params = params if params is not None else SamplingParams(
            temperature=0.8, top_p=0.5, presence_penalty=0.2, frequency_penalty=0.2, penalty_decay=0.996,
            max_tokens=250,
        )
        self.generator = Generator(model, tokenizer)
        self.tokenizer = self.generator.tokenizer
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self._end_tokens = end_tokens(self.tokenizer)
        self._n_replies = 0
        self.last: Optional[_Reply] = None

        intro = self.preset.intro
        if intro.strip():
            intro = intro.rstrip("\n") + "\n\n"
            tokens = self.tokenizer.encode(intro)
            self._note(f"reading the {len(tokens)}-token intro of the prompt preset {self.preset.name or ''}".rstrip())
            self.intro_state: Optional[FloatArray] = model.ingest(tokens, initial_state)
            self.intro_tail = intro[-_TAIL_CHARS:]
        else:
            self.intro_state = initial_state
            self.intro_tail = ""
        self.state, self.tail = self.intro_state, self.intro_tail

    # -- output ----------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _note(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    # -- the loop --------------------------------------------------------------------------

    def run(self, stdin: Optional[TextIO] = None) -> int:
        """Reads messages until end of input or Ctrl-C at the prompt; returns 0."""
        stdin = stdin if stdin is not None else sys.stdin
        interactive = stdin is sys.stdin and _isatty(stdin)
        if interactive:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass
        p = self.preset
        self._note(
            f"Chatting with {p.bot}; you are {p.user}. +help lists the commands. "
            f"Ctrl-C stops a reply; Ctrl-C or Ctrl-D at the prompt quits."
        )
        prompt = f"{p.user}{p.separator} "
        while True:
            try:
                if interactive:
                    line = input(prompt)
                else:
                    line = stdin.readline()
                    if not line:
                        break
                    if line.strip():  # echo the message, so the output reads as a transcript
                        self._write(prompt + line.replace("\\n", "\n").strip() + "\n\n")
            except EOFError:
                self._write("\n")
                break
            except KeyboardInterrupt:
                self._write("\n")
                break
            try:
                self.handle(line)
            except KeyboardInterrupt:
                self._write("\n[interrupted]\n\n")
        return 0

    def handle(self, line: str) -> None:
        """Acts on one line of input: a command or a chat message."""
        msg = line.replace("\\n", "\n").strip()
        if not msg:
            return
        word, _, rest = msg.partition(" ")
        rest = rest.strip()
        command = word.lower()
        p = self.preset
        if command == "+help":
            self._write(HELP + "\n")
        elif command == "+reset":
            self.state, self.tail = self.intro_state, self.intro_tail
            self.last = None
            self._write(f"{p.bot}{p.separator} Chat reset.\n\n")
        elif command in ("+gen", "+i", "+qa"):
            if not rest:
                self._write(f"{command} needs some text after it; +help lists the commands\n\n")
            elif command == "+gen":
                self._reply("free", None, "", self.tokenizer.encode(rest), (), label=False)
            elif command == "+i":
                text = f"Instruction: {rest}\n\nResponse:"
                self._reply("free", None, "", self.tokenizer.encode(text), ("\n\nInstruction:",), label=False)
            else:
                text = _join(self.intro_tail, p.turn(rest))
                self._reply("qa", self.intro_state, self.intro_tail, self.tokenizer.encode(text), (p.stop,),
                            label=True)
        elif command == "+++" and not rest:
            last = self.last
            if last is None:
                self._write("There is no reply to continue yet.\n\n")
            elif last.result is not None and last.result.finish_reason == "length":
                # Cut short by max_tokens: go on from exactly where it ended.
                result = last.result
                tail = (last.tail_before + self.tokenizer.decode(last.prompt + result.tokens))[-_TAIL_CHARS:]
                self._reply(last.kind, result.state, tail, [], last.stop, label=False, logits=result.logits)
            else:
                # Ended by a stop string or token, or Ctrl-C: read the reply as shown again and go on.
                self._reply(last.kind, last.state_before, last.tail_before, last.prompt + last.reply, last.stop,
                            label=False, logits=last.logits_before)
        elif command in ("++", "+") and not rest:
            last = self.last
            if last is None:
                self._write("There is no reply to retry yet.\n\n")
            else:
                self._reply(last.kind, last.state_before, last.tail_before, last.prompt, last.stop,
                            label=last.label, logits=last.logits_before)
        elif re.fullmatch(r"\++[A-Za-z]*", word):
            self._write(f"Unknown command {word}; +help lists the commands.\n\n")
        else:
            text = _join(self.tail, p.turn(msg))
            self._reply("chat", self.state, self.tail, self.tokenizer.encode(text), (p.stop,), label=True)

    # -- one reply -------------------------------------------------------------------------

    def _next_params(self, stop: tuple[str, ...]) -> SamplingParams:
        seed = self.params.seed
        if seed is not None:
            seed += self._n_replies
        self._n_replies += 1
        stops = tuple(dict.fromkeys(tuple(self.params.stop) + stop))
        stop_tokens = tuple(dict.fromkeys(tuple(self.params.stop_tokens) + self._end_tokens))
        return dataclasses.replace(self.params, stop=stops, stop_tokens=stop_tokens, seed=seed)

    def _reply(self, kind: str, state_before: Optional[FloatArray], tail_before: str, prompt: list[int],
               stop: tuple[str, ...], label: bool, logits: Optional[FloatArray] = None) -> str:
        """Generates, prints and records one reply; returns its text.

        ``prompt`` is read from ``state_before`` (``logits`` go with it when the prompt is
        empty); ``tail_before`` is the end of the conversation text that state holds.
        """
        p = self.preset
        params = self._next_params(stop)
        if label:
            self._write(f"{p.bot}{p.separator}")
        chunks = self.generator.stream(prompt, params, state_before, logits=logits)
        pieces: list[str] = []
        tokens: list[int] = []
        result = None
        try:
            for chunk in chunks:
                if chunk.text:
                    self._write(chunk.text)
                    pieces.append(chunk.text)
                if chunk.result is not None:
                    result = chunk.result
                    tokens = list(result.tokens)  # (the last chunk's token may be a stop token)
                elif chunk.token is not None:
                    tokens.append(chunk.token)
        except KeyboardInterrupt:
            chunks.close()
        text = "".join(pieces)
        self._write("\n" if text.endswith("\n") else "\n\n")

        consumed = self.tokenizer.decode(tokens)
        if result is None:
            # Stopped with Ctrl-C: keep what was shown as the reply.
            self._write("[reply stopped]\n\n")
            state_after = None
            if kind == "chat":
                if prompt or tokens:
                    state_after = self.model.ingest(prompt + tokens, state_before)
                else:
                    state_after = state_before
            shown = tokens
        else:
            state_after = result.state if kind == "chat" else None
            shown = tokens if consumed == text else self.tokenizer.encode(text)

        self.last = _Reply(kind, state_before, logits, tail_before, prompt, shown, stop, label, result)
        if kind == "chat":
            self.state = state_after
            self.tail = (tail_before + self.tokenizer.decode(prompt) + consumed)[-_TAIL_CHARS:]
        return text


def _join(tail: str, turn: str) -> str:
    """The text to add after a conversation ending in ``tail`` so that it goes on with a blank
    line and ``turn``: the part of "\\n\\n" + turn that the conversation does not already end
    with (a reply cut at the stop string "\\n\\nUser:" has read that much of it already)."""
    if not tail:
        return turn
    want = "\n\n" + turn
    for k in range(min(len(tail), len(want)), 0, -1):
        if tail.endswith(want[:k]):
            return want[k:]
    return want


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
