"""Text generation: a prompt in, text out, one token at a time.

The loop is the same for every front end (``Model.generate`` and the other text methods of
:mod:`rwkvcpp.high_level`, the ``rwkvcpp generate`` and ``rwkvcpp chat`` commands, the HTTP
server):

1. the prompt goes through the model in one ``eval_sequence`` call (much faster than token by
   token, and the state passed in is left untouched);
2. a :class:`~rwkvcpp.sampling.Sampler` picks each next token, which is then evaluated;
3. generation ends at a stop token, a stop string or ``max_tokens``.

:class:`Generator` is the core: ``Generator(model).stream(prompt, params)`` yields one
:class:`Chunk` per sampled token and the last chunk carries the :class:`Generation` result
(finish reason, usage counts, final state). Stopping the iteration early cancels the generation;
nothing else needs cleaning up. ``Model.generate`` and ``Model.complete`` are its
keyword-argument conveniences.

Text rules:

* text is decoded with a :class:`~rwkvcpp.tokenizer.StreamDecoder`, so a character split across
  tokens is never emitted half-done;
* a stop string is never part of the text. Text that could be the beginning of a stop string is
  held back until the next tokens show whether it is, so stop strings split across tokens are
  caught too (a streamed chunk's ``text`` can therefore be empty).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator as PyGenerator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional, Union

import numpy as np

from ._typing import FloatArray, StrPath
from .constrain import END_TOKEN, Constraint
from .sampling import Sampler, SamplingParams, TokenLogprob
from .tokenizer import StreamDecoder, Tokenizer

if TYPE_CHECKING:  # only for annotations: model.py imports this module lazily
    from .model import Model

__all__ = [
    "Chunk",
    "Decoding",
    "Completion",
    "Generation",
    "Generator",
]

FINISH_STOP = "stop"  # a stop token or stop string was produced
FINISH_LENGTH = "length"  # max_tokens were produced

Prompt = Union[str, bytes, Sequence[int], np.ndarray]


class Generation:
    """The result of one generation.

    text:               the generated text, cut before a stop string
    tokens:             the generated token ids, without a stop token (a stop string's tokens
                        are included: the model produced them)
    finish_reason:      ``"stop"`` (stop token or stop string) or ``"length"`` (max_tokens)
    stop:               the stop string or stop token id that ended it, else None (max_tokens, or
                        a grammar that was complete)
    prompt_tokens:      number of prompt tokens evaluated by this call
    completion_tokens:  number of tokens sampled, a stop token included
    prompt_seconds, completion_seconds: wall-clock time of the two phases
    logprobs:           with ``SamplingParams.logprobs`` set, one
                        :class:`~rwkvcpp.sampling.TokenLogprob` per token of ``tokens``; else None
    state, logits:      the model state after the prompt and ``tokens``, and the logits that go
                        with it; pass both back (``state=``, ``logits=``, empty prompt) to continue
                        exactly where this generation ended, or only ``state`` with more prompt.

    ``state`` and ``logits`` are computed on first access: the last sampled token has not been
    through the model yet (nothing needed its logits), and a caller that never looks at the
    state (a stateless server request) should not pay for that evaluation.
    """

    def __init__(self, *, model: Model, text: str, tokens: list[int], finish_reason: str,
                 stop: str | int | None, prompt_tokens: int, completion_tokens: int,
                 prompt_seconds: float, completion_seconds: float, state: FloatArray,
                 logits: FloatArray, unevaluated: list[int], logprobs: Optional[list[TokenLogprob]] = None):
        self.text = text
        self.logprobs = logprobs
        self.tokens = tokens
        self.finish_reason = finish_reason
        self.stop = stop
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.prompt_seconds = prompt_seconds
        self.completion_seconds = completion_seconds
        self._model = model
        self._state = state
        self._logits = logits
        self._unevaluated = unevaluated
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Generation(text={self.text!r}, finish_reason={self.finish_reason!r}, stop={self.stop!r}, "
            f"prompt_tokens={self.prompt_tokens}, completion_tokens={self.completion_tokens})"
        )

    def _catch_up(self) -> None:
        with self._lock:
            if self._unevaluated:
                self._model.eval_sequence(self._unevaluated, self._state, state_out=self._state,
                                          logits_out=self._logits)
                self._unevaluated = []

    def _settle(self, state: FloatArray, logits: FloatArray) -> None:
        """Takes the state and logits after ``tokens`` computed elsewhere (a batch's pass), unless
        they were computed here already."""
        with self._lock:
            if self._unevaluated:
                self._state, self._logits, self._unevaluated = state, logits, []

    @property
    def state(self) -> FloatArray:
        """Model state after the prompt and all of ``tokens``."""
        self._catch_up()
        return self._state

    @property
    def logits(self) -> FloatArray:
        """Logits for the token after ``tokens`` (they go with ``state``)."""
        self._catch_up()
        return self._logits

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def usage(self) -> dict[str, int]:
        """OpenAI-style usage counts."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }

    @property
    def tokens_per_second(self) -> float:
        """Generation speed (prompt processing not included)."""
        return self.completion_tokens / self.completion_seconds if self.completion_seconds > 0 else 0.0


class Chunk:
    """One step of a streamed generation: one sampled token and the text it released.

    ``text`` may be empty (an unfinished character or a possible stop string is being held
    back) and may hold text of earlier tokens. The last chunk has ``finish_reason`` set and
    ``result``, the :class:`Generation`; ``state``, ``prompt_tokens``, ``completion_tokens``
    and ``usage`` read through to it (None on other chunks). ``token`` is the sampled id; a
    stop token appears here (on the last chunk) although it is not part of ``result.tokens``,
    and it is None only when max_tokens is 0. ``logprob`` is the token's
    :class:`~rwkvcpp.sampling.TokenLogprob` when the params ask for ``logprobs`` (None for a
    stop token: it is not part of the output).
    """

    __slots__ = ("text", "token", "finish_reason", "result", "logprob")

    def __init__(self, text: str, token: int | None, finish_reason: str | None = None,
                 result: Generation | None = None, logprob: TokenLogprob | None = None):
        self.text = text
        self.token = token
        self.finish_reason = finish_reason
        self.result = result
        self.logprob = logprob

    def __repr__(self) -> str:
        end = f", finish_reason={self.finish_reason!r}" if self.finish_reason else ""
        return f"Chunk(text={self.text!r}, token={self.token}{end})"

    @property
    def state(self) -> FloatArray | None:
        return self.result.state if self.result is not None else None

    @property
    def prompt_tokens(self) -> int | None:
        return self.result.prompt_tokens if self.result is not None else None

    @property
    def completion_tokens(self) -> int | None:
        return self.result.completion_tokens if self.result is not None else None

    @property
    def usage(self) -> dict[str, int] | None:
        return self.result.usage if self.result is not None else None


class _StopStrings:
    """Cuts streamed text at the first stop string, holding back what might start one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.held = ""

    def feed(self, piece: str) -> tuple[str, Optional[str]]:
        """Returns (text safe to emit, the stop string found or None)."""
        if not self.stops:
            return piece, None
        text = self.held + piece
        # The earliest occurrence wins, whichever stop string it is. Because possible starts are
        # always held back, an occurrence can only begin inside `text`.
        found = None
        for stop in self.stops:
            at = text.find(stop)
            if at >= 0 and (found is None or at < found[0]):
                found = (at, stop)
        if found is not None:
            self.held = ""
            return text[: found[0]], found[1]
        keep = self._longest_partial(text)
        self.held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep], None

    def _longest_partial(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best

    def finish(self, tail: str) -> tuple[str, Optional[str]]:
        """At the end: whatever is held back plus ``tail`` (the decoder's last text) goes out,
        unless it completes a stop string."""
        text, stop = self.feed(tail)
        text, self.held = text + self.held, ""
        return text, stop


class Generator:
    """Generates text with one model and tokenizer. Holds no per-generation state, so one
    Generator can serve many generations, from several threads at once."""

    def __init__(self, model: Model, tokenizer: Union[Tokenizer, StrPath, None] = None):
        self.model = model
        if tokenizer is None:
            tokenizer = model.tokenizer
        elif not isinstance(tokenizer, Tokenizer):  # a name ("world", "bytes") or a vocabulary file
            tokenizer = Tokenizer.from_name(tokenizer, n_vocab=model.n_vocab)
        self.tokenizer = tokenizer

    def encode(self, prompt: Prompt) -> list[int]:
        """Prompt token ids: text (or bytes, for byte-based tokenizers) is tokenized, a sequence
        of ints is taken as token ids."""
        if isinstance(prompt, (str, bytes, bytearray)):
            return self.tokenizer.encode(prompt)
        try:
            ids = [int(t) for t in prompt]
        except (TypeError, ValueError):
            raise TypeError(f"prompt must be text or a sequence of token ids, not {type(prompt).__name__}") from None
        from .model import check_token_range  # not at the top: that would load the engine on import

        check_token_range(ids, self.model.n_vocab)
        return ids

    def stream(self, prompt: Prompt, params: Optional[SamplingParams] = None, state: Optional[FloatArray] = None,
               *, logits: Optional[FloatArray] = None) -> PyGenerator[Chunk, None, None]:
        """Generates from ``prompt`` (text or token ids), continuing ``state`` if given.

        Yields one :class:`Chunk` per sampled token; the last one carries the result. An empty
        prompt continues from ``state`` and ``logits`` (a Generation's pair) directly.
        ``params.max_tokens`` of None means no limit. Arguments are checked here, before the
        first chunk is asked for; neither ``state`` nor ``logits`` is modified.
        """
        params = params if params is not None else SamplingParams()
        ids = self.encode(prompt)
        sampler = Sampler(params, self.model.n_vocab)
        if not ids and logits is None:
            raise ValueError("the prompt is empty: give some text, or the logits that go with the state to continue")
        if logits is not None:
            logits = np.asarray(logits)
            if logits.shape != (self.model.n_vocab,):
                raise ValueError(f"logits must have shape ({self.model.n_vocab},), got {logits.shape}")
        if state is not None:
            self.model._check_state(state, "state")
        return self._run(ids, params, sampler, state, logits)

    def complete(self, prompt: Prompt, params: Optional[SamplingParams] = None, state: Optional[FloatArray] = None,
                 *, logits: Optional[FloatArray] = None) -> Generation:
        """Like :meth:`stream`, but runs to the end and returns the :class:`Generation` (also
        known as :data:`Completion`: text, tokens, finish_reason, usage, state)."""
        result = None
        for chunk in self.stream(prompt, params, state=state, logits=logits):
            result = chunk.result
        assert result is not None
        return result

    generate = complete  # the same method, named after its result type

    def _run(self, ids: list[int], params: SamplingParams, sampler: Sampler,
             state: Optional[FloatArray], logits: Optional[FloatArray]) -> PyGenerator[Chunk, None, None]:
        model = self.model
        started = time.perf_counter()
        if ids:
            logits, state = model.eval_sequence(ids, state)  # new arrays; the caller's are untouched
            sampler.observe_prompt(ids)
        else:
            state = model.init_state() if state is None else np.array(state, dtype=np.float32)
            logits = np.array(logits, dtype=np.float32)
        decoding = Decoding(model, self.tokenizer, params, sampler, len(ids), started)
        while True:
            chunk = decoding.step(state, logits)
            yield chunk
            if chunk.finish_reason is not None:
                return
            # The token goes through the model only now that its logits are needed. The state
            # and logits arrays are ours (fresh above), so update them in place.
            assert chunk.token is not None  # only a max_tokens=0 chunk has none, and it is the last
            model.eval(chunk.token, state, state_out=state, logits_out=logits)


class Decoding:
    """One choice being generated, between evaluations: its sampler, its text decoder, its stop
    strings and counts. Whoever runs the model (:class:`Generator` for one sequence,
    :class:`~rwkvcpp.batch.BatchGenerator` for many) calls :meth:`step` with the logits after
    each evaluation and evaluates the returned chunk's token next, until a chunk has a
    ``finish_reason``."""

    def __init__(self, model: Model, tokenizer: Tokenizer, params: SamplingParams, sampler: Sampler,
                 prompt_tokens: int, started: float):
        self.model = model
        self.params = params
        self.sampler = sampler
        self.prompt_tokens = prompt_tokens
        self.started = started
        self.prompt_done: Optional[float] = None
        self.decoder = StreamDecoder(tokenizer)
        self.stops = _StopStrings(params.stop)
        self.stop_tokens = frozenset(params.stop_tokens)
        self.tokens: list[int] = []
        self.pieces: list[str] = []
        self.logprobs: Optional[list[TokenLogprob]] = [] if params.logprobs is not None else None
        self.sampled = 0
        self.constraint = Constraint(params.grammar, tokenizer, model.n_vocab) if params.grammar is not None else None

    def step(self, state: FloatArray, logits: FloatArray) -> Chunk:
        """Samples the next token from ``logits`` (they go with ``state``, the state after the
        prompt and every token so far) and returns its chunk. A finished chunk's result holds
        ``state`` and ``logits`` themselves, so they must not change after that."""
        if self.prompt_done is None:
            self.prompt_done = time.perf_counter()
        limit = self.params.max_tokens
        if limit == 0:
            return Chunk("", None, FINISH_LENGTH, self._finish(FINISH_LENGTH, None, state, logits, []))
        scored = None
        constraint = self.constraint
        allowed = constraint.allowed() if constraint is not None else None
        if self.logprobs is not None:
            token, scored = self.sampler.sample_scored(logits, self.params.logprobs or 0, allowed)
        else:
            token = self.sampler.sample(logits, allowed)
        self.sampled += 1
        stops = self.stops

        if token in self.stop_tokens or (constraint is not None and token == END_TOKEN):
            text, stop = stops.finish(self.decoder.flush())
            self.pieces.append(text)
            # The stop token is not part of the output, nor of the state.
            result = self._finish(FINISH_STOP, stop if stop else token, state, logits, [])
            return Chunk(text, token, FINISH_STOP, result)

        self.tokens.append(token)
        if self.logprobs is not None and scored is not None:
            self.logprobs.append(scored)
        self.sampler.observe(token)
        text, stop = stops.feed(self.decoder.feed(token))
        complete = False
        if constraint is not None:
            constraint.take(token)
            complete = constraint.finished  # nothing may follow: end here, not a step later
        if stop is None and (complete or (limit is not None and self.sampled >= limit)):
            more, stop = stops.finish(self.decoder.flush())
            text += more
            if stop is None:
                self.pieces.append(text)
                reason = FINISH_STOP if complete else FINISH_LENGTH
                return Chunk(text, token, reason, self._finish(reason, None, state, logits, [token]), scored)
        self.pieces.append(text)
        if stop is not None:
            return Chunk(text, token, FINISH_STOP, self._finish(FINISH_STOP, stop, state, logits, [token]), scored)
        return Chunk(text, token, logprob=scored)

    def _finish(self, reason: str, stop: str | int | None, state: FloatArray, logits: FloatArray,
                unevaluated: list[int]) -> Generation:
        prompt_done = self.prompt_done if self.prompt_done is not None else self.started
        return Generation(
            model=self.model, text="".join(self.pieces), tokens=self.tokens, finish_reason=reason, stop=stop,
            prompt_tokens=self.prompt_tokens, completion_tokens=self.sampled,
            prompt_seconds=prompt_done - self.started, completion_seconds=time.perf_counter() - prompt_done,
            state=state, logits=logits, unevaluated=unevaluated, logprobs=self.logprobs,
        )


# The result of Generator.complete: the name the HTTP server and the docs use.
Completion = Generation
