"""A griffe extension for the API reference (mkdocs.yml): the docstrings are written for
``help()`` with a few reStructuredText habits, which it turns into Markdown as they are loaded.

* roles: ``:class:`~rwkvcpp.generate.Generation``` becomes `` `Generation` ``, ``:meth:`title
  <target>``` becomes `` `title` ``, ``:mod:`rwkvcpp.batch``` stays whole (`` `rwkvcpp.batch` ``);
* index notation such as ``[value][key]`` (a matrix's orientation) is code, not a Markdown link;
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


def rst_to_markdown(text: str) -> str:
    return _INDEXES.sub(r"`\1`", _LITERAL.sub(":", _ROLE.sub(_role_text, text)))


class RstRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
