"""A griffe extension for the API reference (mkdocs.yml): the docstrings are written for
``help()`` with a few reStructuredText habits, which it turns into Markdown as they are loaded.

* roles: ``:class:`~rwkvcpp.generate.Generation``` becomes `` `Generation` ``, ``:meth:`title
  <target>``` becomes `` `title` ``, ``:mod:`rwkvcpp.batch``` stays whole (`` `rwkvcpp.batch` ``);
* index notation such as ``[value][key]`` (a matrix's orientation) is code, not a Markdown link;
* an aligned field list (``name:   what it is`` lines, continued indented) becomes a bullet list;
* a paragraph ending in ``::`` (a literal block follows, indented) ends in ``:``; the indented
  block is a Markdown code block as it is.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj):`([^`]+)`")
_LITERAL = re.compile(r"::$", re.M)
_INDEXES = re.compile(r"(?<![`\w])((?:\[\w+\]){2,})")


def _role_text(match: re.Match[str]) -> str:
    text = match.group(1)
    titled = re.fullmatch(r"(.+?)\s*<[^>]+>", text)
    if titled:
        return f"`{titled.group(1)}`"
    if text.startswith("~"):
        return f"`{text[1:].rsplit('.', 1)[-1]}`"
    return f"`{text}`"


_FIELD = re.compile(r"^([\w.]+(?:, [\w.]+)*):(\s+)(\S.*)$")


def _field_lists(text: str) -> str:
    lines, out = text.split("\n"), []
    in_list = False
    for line in lines:
        field = _FIELD.match(line)
        if field and (in_list or len(field.group(2)) >= 2):  # aligned, or within the list
            if not in_list and out and out[-1].strip():
                out.append("")  # Markdown starts a list after a blank line
            names = ", ".join(f"`{name}`" for name in field.group(1).split(", "))
            out.append(f"- {names}: {field.group(3)}")
            in_list = True
        elif in_list and line.startswith("    ") and line.strip():
            out[-1] += " " + line.strip()
        else:
            if in_list and line.strip():
                out.append("")
            in_list = False
            out.append(line)
    return "\n".join(out)


def rst_to_markdown(text: str) -> str:
    text = _field_lists(_LITERAL.sub(":", _ROLE.sub(_role_text, text)))
    return _INDEXES.sub(r"`\1`", text)


class RstRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
