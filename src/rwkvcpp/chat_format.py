"""OpenAI chat messages as an RWKV chat prompt, and the reply back as an OpenAI message.

The prompt is plain text in the shape RWKV World models are trained on, one turn per message,
turns separated by a blank line, ending with the assistant's turn for the model to write::

    System: You are a helpful assistant.

    User: What is the weather in Paris?

    Assistant:

A reply ends where the model starts another turn: the stop strings are :data:`TURN_STOPS`
(``"\\n\\nUser:"`` and the like). Blank lines inside system, user and tool messages are folded
into single newlines (as ChatRWKV does) so a message cannot fake the start of a turn.

Tool calls. With ``tools``, a system turn lists the tool definitions (one JSON object a line)
and asks for a reply made of lines in this agreed format, and nothing else::

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

:func:`parse_tool_calls` turns such a reply into OpenAI ``tool_calls`` (ids ``call_...``,
arguments as a JSON string). A reply that is not exactly that (bad JSON, an unknown tool name,
other text after a call) is returned as plain content. An assistant message with
``tool_calls`` is rendered back in the same format, and a ``tool`` message as a ``Tool:`` turn::

    Tool: <tool_result name="get_weather" id="call_x">{"temp_c": 21}</tool_result>

``tool_choice`` "none" leaves the tools out; "required" starts the reply with ``<tool_call>``
and a named function with ``<tool_call>{"name": "NAME", "arguments": `` (the model writes the
rest).
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any, Optional, Sequence

__all__ = [
    "TURN_STOPS",
    "TOOL_CALL_OPEN",
    "TOOL_CALL_CLOSE",
    "ChatPrompt",
    "ReplyStream",
    "render_chat",
    "parse_tool_calls",
    "new_call_id",
]

USER, ASSISTANT, SYSTEM, TOOL = "User", "Assistant", "System", "Tool"
TURN_STOPS = ("\n\nUser:", "\n\nSystem:", "\n\nTool:")
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")


class ChatPrompt:
    """A rendered conversation: ``text`` ends with the assistant's turn, plus any ``prefill``
    (the start of the reply that the server writes for the model); ``stop`` ends a reply;
    ``tools`` are the offered tool names (empty: replies are never parsed as tool calls);
    ``call_grammar``, when the reply must be a tool call, is what must follow the prefill, in
    llguidance's Lark syntax (see :mod:`rwkvcpp.constrain`): the call's JSON, held to the tools'
    parameter schemas, and the closing tag."""

    def __init__(self, text: str, prefill: str, stop: tuple[str, ...], tools: tuple[str, ...],
                 call_grammar: Optional[str] = None):
        self.text = text
        self.prefill = prefill
        self.stop = stop
        self.tools = tools
        self.call_grammar = call_grammar

    def __repr__(self) -> str:
        return f"ChatPrompt(text={self.text!r}, prefill={self.prefill!r}, tools={self.tools!r})"


def _fold(text: str) -> str:
    """One message's text for the prompt: normalised newlines, no blank lines, no outer space."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    return _BLANK_LINES.sub("\n", text)


def _get(obj: object, name: str, default: Any = None) -> Any:
    """A field of a message given as a dict or as an object (a pydantic model)."""
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def message_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    pieces: list[str] = []
    for part in content:
        kind = _get(part, "type")
        if kind not in ("text", "input_text"):
            raise ValueError(f"content parts of type {kind!r} are not supported: this model reads text only")
        pieces.append(_get(part, "text") or "")
    return "\n".join(pieces)


def _tool_line(tool: Any) -> str:
    fn = _get(tool, "function")
    entry = {"name": _get(fn, "name")}
    if _get(fn, "description"):
        entry["description"] = _get(fn, "description")
    entry["parameters"] = _get(fn, "parameters") or {"type": "object", "properties": {}}
    return json.dumps(entry, ensure_ascii=False, separators=(", ", ": "))


def _tools_turn(tools: Sequence[Any], choice: str | None) -> str:
    lines = ["You can call these tools:"]
    lines += [_tool_line(t) for t in tools]
    lines.append(
        "To call tools, reply only with one line for each call, in exactly this format: "
        f'{TOOL_CALL_OPEN}{{"name": "TOOL_NAME", "arguments": {{...JSON arguments...}}}}{TOOL_CALL_CLOSE}'
    )
    lines.append("Each result comes back in a Tool message.")
    if choice == "required":
        lines.append("You must call at least one tool now.")
    elif choice not in (None, "auto"):
        lines.append(f"You must call the tool {choice} now.")
    else:
        lines.append("If no tool is needed, answer normally.")
    return "\n".join(lines)


def _arguments_json(arguments: Any) -> str:
    """A tool call's arguments for the prompt: compact JSON of the object when it parses."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return json.dumps(arguments, ensure_ascii=False)
    return json.dumps(arguments, ensure_ascii=False, separators=(", ", ": "))


def render_tool_call(name: str, arguments: Any) -> str:
    return f'{TOOL_CALL_OPEN}{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": ' \
           f'{_arguments_json(arguments)}}}{TOOL_CALL_CLOSE}'


def _xml_attr(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace("\n", " ")


def render_chat(messages: Sequence[Any], tools: Optional[Sequence[Any]] = None, tool_choice: Any = None) -> ChatPrompt:
    """The prompt for ``messages`` (dicts or objects with role, content, tool_calls,
    tool_call_id, name), with ``tools`` (OpenAI function tools) offered unless ``tool_choice``
    is "none". ``tool_choice``: None/"auto", "none", "required", or a function name (or an
    OpenAI ``{"type": "function", "function": {"name": ...}}`` choice)."""
    if not messages:
        raise ValueError("messages must contain at least one message")
    choice = tool_choice
    if choice is not None and not isinstance(choice, str):
        choice = _get(_get(choice, "function"), "name")
    tools = list(tools or ())
    if choice == "none":
        tools = []
    names = tuple(_get(_get(t, "function"), "name") for t in tools)
    if choice not in (None, "auto", "none", "required") and choice not in names:
        raise ValueError(f"tool_choice names the function {choice!r}, which is not among the tools")
    if choice == "required" and not tools:
        raise ValueError("tool_choice is 'required' but no tools are given")

    turns: list[str] = []
    call_names: dict[str, str] = {}  # tool_call_id -> function name, for the tool messages
    tools_done = not tools
    for i, message in enumerate(messages):
        role = _get(message, "role")
        if not tools_done and role not in ("system", "developer"):
            turns.append(f"{SYSTEM}: {_tools_turn(tools, choice)}")
            tools_done = True
        if role in ("system", "developer"):
            text = _fold(message_text(_get(message, "content")))
            if text:
                turns.append(f"{SYSTEM}: {text}")
        elif role == "user":
            turns.append(f"{USER}: {_fold(message_text(_get(message, 'content')))}")
        elif role == "assistant":
            # Kept as the model wrote it (only stripped), so that the prompt of the next turn
            # starts with the tokens of this one and its reply: the state cache then applies.
            text = message_text(_get(message, "content")).strip()
            calls = []
            for call in _get(message, "tool_calls") or ():
                fn = _get(call, "function")
                name = _get(fn, "name")
                call_id = _get(call, "id")
                if call_id:
                    call_names[call_id] = name
                calls.append(render_tool_call(name, _get(fn, "arguments") or {}))
            body = "\n".join(([text] if text else []) + calls)
            turns.append(f"{ASSISTANT}: {body}" if body else f"{ASSISTANT}:")
        elif role in ("tool", "function"):
            call_id = _get(message, "tool_call_id") or ""
            name = _get(message, "name") or call_names.get(call_id, "")
            attrs = ""
            if name:
                attrs += f' name="{_xml_attr(name)}"'
            if call_id:
                attrs += f' id="{_xml_attr(call_id)}"'
            text = _fold(message_text(_get(message, "content")))
            turns.append(f"{TOOL}: <tool_result{attrs}>{text}</tool_result>")
        else:
            raise ValueError(f"messages[{i}]: unknown role {role!r}")
    if not tools_done:  # only system messages
        turns.append(f"{SYSTEM}: {_tools_turn(tools, choice)}")

    prefill, grammar = "", None
    schemas = {name: _get(_get(t, "function"), "parameters") or {"type": "object"} for name, t in zip(names, tools)}
    if choice == "required":
        prefill = TOOL_CALL_OPEN
        call_schemas = [{"type": "object", "properties": {"name": {"const": name}, "arguments": schema},
                         "required": ["name", "arguments"], "additionalProperties": False}
                        for name, schema in schemas.items()]
        grammar = _lark_json_then({"anyOf": call_schemas}, TOOL_CALL_CLOSE)
    elif choice not in (None, "auto", "none"):
        prefill = f'{TOOL_CALL_OPEN}{{"name": {json.dumps(choice, ensure_ascii=False)}, "arguments": '
        grammar = _lark_json_then(schemas[choice], "}" + TOOL_CALL_CLOSE)
    text = "\n\n".join(turns) + f"\n\n{ASSISTANT}:"
    if prefill:
        text += " " + prefill
    return ChatPrompt(text, prefill, TURN_STOPS, names, grammar)


def _lark_json_then(schema: dict[str, Any], tail: str) -> str:
    """A Lark grammar (llguidance's dialect): compact JSON valid under ``schema``, then ``tail``."""
    compact = {**schema, "x-guidance": {"whitespace_flexible": False}}
    return f"start: call {json.dumps(tail)}\ncall: %json {json.dumps(compact, ensure_ascii=False)}\n"


# What separates new turns from a saved conversation they continue (rwkvcpp serve's rwkv_state).
CONTINUATION = "\n\n"


def conversation_text(messages: Sequence[Any], tools: Optional[Sequence[Any]] = None,
                      tool_choice: Any = None) -> str:
    """The conversation as :func:`render_chat` writes it, without the assistant's cue at the end:
    the text whose state a saved session keeps."""
    text = render_chat(messages, tools, tool_choice).text
    cue = f"\n\n{ASSISTANT}:"
    return text[: -len(cue)] if text.endswith(cue) else text


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def parse_tool_calls(text: str, tools: Sequence[str]) -> Optional[tuple[str, list[dict[str, Any]]]]:
    """``(content, tool_calls)`` when ``text`` is optional plain text followed by one or more
    tool calls in the agreed format (the last closing tag may be missing: generation can stop
    there), each naming one of ``tools`` with a JSON object of arguments; otherwise None.

    ``tool_calls`` are OpenAI's: ``{"id": "call_...", "type": "function", "function":
    {"name": ..., "arguments": "<JSON string>"}}``.
    """
    start = text.find(TOOL_CALL_OPEN)
    if start < 0 or not tools:
        return None
    content = text[:start].strip()
    calls = []
    pos = start
    decoder = json.JSONDecoder()
    while pos < len(text):
        if not text.startswith(TOOL_CALL_OPEN, pos):
            return None
        pos += len(TOOL_CALL_OPEN)
        body_start = len(text[pos:]) - len(text[pos:].lstrip())
        try:
            obj, end = decoder.raw_decode(text, pos + body_start)
        except ValueError:
            return None
        if not isinstance(obj, dict):
            return None
        name, arguments = obj.get("name"), obj.get("arguments", {})
        if isinstance(arguments, str):  # arguments given as a JSON string, as in OpenAI's API
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(name, str) or name not in tools or not isinstance(arguments, dict):
            return None
        calls.append({
            "id": new_call_id(),
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
        })
        rest = text[end:].lstrip()
        if rest.startswith(TOOL_CALL_CLOSE):
            rest = rest[len(TOOL_CALL_CLOSE):].lstrip()
        elif rest:
            return None
        pos = len(text) - len(rest)
    return content, calls


class ReplyStream:
    """Turns the text of one generated reply, piece by piece, into the content to send.

    * leading whitespace of the reply is dropped (the model writes ``" Hello"`` after
      ``"Assistant:"``);
    * with tools on offer, text from ``<tool_call>`` on (and any text that might be its start)
      is held back; :meth:`finish` then returns the parsed calls, or the held text as content
      when it does not parse.

    Streamed and non-streamed replies use the same object, so their text is the same.
    """

    def __init__(self, tools: Sequence[str] = (), prefill: str = "", strip_leading: bool = True):
        self.tools = tuple(tools)
        self._strip = strip_leading
        self._started = False  # some content has been released
        self._pending = ""  # not yet released
        self._holding = False  # a tool call has started: hold everything
        self.content = ""  # all content released so far
        if prefill:
            self._pending = prefill
            self._started = True
            self._holding = bool(self.tools)

    def feed(self, text: str) -> str:
        """Content to send now for the next piece of generated text (may be empty)."""
        if not text:
            return ""
        if self._strip and not self._started:
            text = text.lstrip()
            if not text:
                return ""
            self._started = True
        self._pending += text
        if not self.tools:
            out, self._pending = self._pending, ""
        elif self._holding:
            return ""
        else:
            at = self._pending.find(TOOL_CALL_OPEN)
            if at >= 0:
                out, self._pending = self._pending[:at], self._pending[at:]
                self._holding = True
            else:
                keep = _partial_suffix(self._pending, TOOL_CALL_OPEN)
                cut = len(self._pending) - keep
                out, self._pending = self._pending[:cut], self._pending[cut:]
        self.content += out
        return out

    def finish(self) -> tuple[str, Optional[list[dict[str, Any]]]]:
        """``(last content, tool_calls or None)`` at the end of the reply."""
        pending, self._pending = self._pending, ""
        if self._holding:
            parsed = parse_tool_calls(pending, self.tools)
            if parsed is not None:
                return "", parsed[1]
        self.content += pending
        return pending, None


def _partial_suffix(text: str, word: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``word``."""
    for n in range(min(len(word) - 1, len(text)), 0, -1):
        if text.endswith(word[:n]):
            return n
    return 0
