"""Structured output: generation held to a JSON schema, a grammar or a regular expression.

At each step the grammar says which tokens may come next; the others get a -inf logit before
sampling, so whatever the model and the sampling settings, the text stays a prefix of something
the grammar accepts, and generation ends when the grammar is complete. The matching is
llguidance's (the engine behind llama.cpp's ``--grammar`` option with LLGuidance and several
serving stacks): a Rust library with wheels for every platform, MIT-licensed, that computes a
65536-token mask in a fraction of a millisecond. It is an optional dependency
(``pip install llguidance``); only code that asks for a grammar needs it.

A :class:`Grammar` is an immutable, checked description (``SamplingParams(grammar=...)``);
each generation gets its own :class:`Constraint`, which follows the tokens chosen.

The grammar's end is the vocabulary's end-of-text token (id 0): a constrained generation ends
when the grammar allows nothing else, or when that token is drawn where the grammar may end.
"""

from __future__ import annotations

import json
import threading
import weakref
from types import ModuleType
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from llguidance import LLMatcher, LLTokenizer

    from .tokenizer import Tokenizer

__all__ = ["Grammar", "Constraint", "GrammarError"]

END_TOKEN = 0


class GrammarError(ValueError):
    """A grammar or schema that cannot be used, with llguidance's reason."""


def _llguidance() -> ModuleType:
    try:
        import llguidance
    except ImportError:
        raise GrammarError("structured output needs the llguidance package: pip install llguidance") from None
    return llguidance


class Grammar:
    """A grammar to hold generation to, in llguidance's form. Make one with
    :meth:`json_schema`, :meth:`json_object`, :meth:`gbnf` (llama.cpp's grammar format),
    :meth:`lark` or :meth:`regex`; each checks it at once (GrammarError)."""

    __slots__ = ("source", "kind", "_spec")

    def __init__(self, spec: str, kind: str, source: Any):
        self._spec = spec
        self.kind = kind
        self.source = source
        llg = _llguidance()
        error = llg.LLMatcher.validate_grammar(spec)
        if error:
            raise GrammarError(f"invalid {kind}: {error}")

    def __repr__(self) -> str:
        return f"Grammar.{self.kind}({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Grammar) and other._spec == self._spec

    def __hash__(self) -> int:
        return hash(self._spec)

    @classmethod
    def json_schema(cls, schema: Union[dict[str, Any], str]) -> Grammar:
        """JSON that validates against ``schema`` (a dict or its JSON text), written compactly
        (no whitespace between tokens of JSON)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise GrammarError(f"the JSON schema is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise GrammarError(f"a JSON schema is an object, not {type(schema).__name__}")
        llg = _llguidance()
        try:
            spec = llg.LLMatcher.grammar_from_json_schema(schema, overrides={"whitespace_flexible": False})
        except ValueError as e:
            raise GrammarError(f"invalid JSON schema: {e}") from None
        return cls(spec, "json_schema", schema)

    @classmethod
    def json_object(cls) -> Grammar:
        """Any JSON object (OpenAI's ``response_format: {"type": "json_object"}``)."""
        return cls.json_schema({"type": "object"})

    @classmethod
    def gbnf(cls, text: str) -> Grammar:
        """A grammar in GBNF, llama.cpp's format (``root ::= ...``)."""
        llg = _llguidance()
        from llguidance.gbnf_to_lark import gbnf_to_lark

        try:
            lark = gbnf_to_lark(text)
        except Exception as e:  # its parser raises its own error types
            raise GrammarError(f"invalid GBNF grammar: {e}") from None
        return cls(llg.LLMatcher.grammar_from_lark(lark), "gbnf", text)

    @classmethod
    def lark(cls, text: str) -> Grammar:
        """A grammar in llguidance's Lark syntax (``start: ...``)."""
        return cls(_llguidance().LLMatcher.grammar_from_lark(text), "lark", text)

    @classmethod
    def regex(cls, pattern: str) -> Grammar:
        """Text matching the regular expression ``pattern`` as a whole."""
        return cls(_llguidance().LLMatcher.grammar_from_regex(pattern), "regex", pattern)


# llguidance's view of a vocabulary (every token's bytes): built once per tokenizer (0.2 s for
# World's 65536 tokens) and shared by every constraint on it.
_tables: weakref.WeakKeyDictionary[Tokenizer, LLTokenizer] = weakref.WeakKeyDictionary()
_tables_lock = threading.Lock()


class _Vocabulary:
    """The tokenizer as llguidance's TokenizerWrapper expects it."""

    eos_token_id = END_TOKEN
    bos_token_id = None

    def __init__(self, tokenizer: Tokenizer, n_vocab: int):
        self._tokenizer = tokenizer
        self.tokens = [tokenizer.decode_bytes([i]) for i in range(n_vocab)]
        self.special_token_ids = [END_TOKEN] if tokenizer.name != "bytes" else []

    def __call__(self, text: Union[str, bytes]) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return list(self._tokenizer.encode(text))


def _table(tokenizer: Tokenizer, n_vocab: int) -> LLTokenizer:
    with _tables_lock:
        table = _tables.get(tokenizer)
        if table is None or table.vocab_size != n_vocab:
            llg = _llguidance()
            table = llg.LLTokenizer(llg.TokenizerWrapper(_Vocabulary(tokenizer, n_vocab)))
            _tables[tokenizer] = table
        return table


class Constraint:
    """One generation's place in a grammar: the tokens allowed next, and the tokens taken."""

    def __init__(self, grammar: Grammar, tokenizer: Tokenizer, n_vocab: int):
        llg = _llguidance()
        self.n_vocab = n_vocab
        self._matcher: LLMatcher = llg.LLMatcher(_table(tokenizer, n_vocab), grammar._spec)
        self._check()
        self._bitmask = np.zeros((n_vocab + 31) // 32, dtype=np.int32)

    def _check(self) -> None:
        if self._matcher.is_error():
            raise GrammarError(f"grammar: {self._matcher.get_error()}")

    @property
    def finished(self) -> bool:
        """Nothing more can follow: the grammar is complete."""
        return self._matcher.is_stopped()

    def allowed(self) -> NDArray[np.bool_]:
        """A boolean mask of the tokens that may come next (the end token where the grammar may
        end here)."""
        self._matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
        self._check()
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
        return bits[:self.n_vocab].astype(bool)

    def take(self, token: int) -> None:
        """Follows ``token`` (one :meth:`allowed` gave)."""
        if not self._matcher.consume_token(token):
            self._check()
            raise GrammarError(f"token {token} is not allowed here by the grammar")

    @property
    def may_end(self) -> bool:
        return self._matcher.is_accepting()
