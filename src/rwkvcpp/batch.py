"""Many generations at once: one pass over the weights per step for every sequence.

Reading the weights is most of what a decoded token costs, and an RWKV sequence carries only a
fixed-size state, so B sequences stepped together cost far less than B stepped one by one
(:meth:`rwkvcpp.Model.eval_batch`). :class:`BatchGenerator` keeps a set of generations and
advances all of them with each :meth:`~BatchGenerator.step`:

* a prompt is read in the same passes as the others' decoding, at most ``prompt_chunk`` of its
  tokens per pass, so a long prompt does not stall the sequences already generating;
* a prompt with several choices (``n > 1``) is read once; its state and logits are then copied
  to each choice;
* each choice samples with its own :class:`~rwkvcpp.sampling.SamplingParams` (seed, stop
  strings, max_tokens) and leaves the batch the moment it ends; sequences may be added and
  cancelled between steps (continuous batching: the HTTP server's engine loop is one
  BatchGenerator).

Every sequence gets the logits it would get alone (``eval_batch`` gives each sequence the bits
of ``eval_sequence``), so a batch samples the same text, seed for seed, as
:class:`~rwkvcpp.generate.Generator` one prompt at a time (with whole prompts: see
``prompt_chunk``).

A BatchGenerator is driven by one thread at a time.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple, Optional, Union

import numpy as np

from ._typing import FloatArray, StrPath, TokenArray
from .generate import Chunk, Decoding, Generation, Generator, Prompt
from .sampling import Sampler, SamplingParams
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    from .model import Model

__all__ = ["BatchGenerator", "Event"]


class Event(NamedTuple):
    """What one step did for one choice: ``chunk`` of choice ``choice`` (an id from
    :meth:`BatchGenerator.add`). A chunk with a ``finish_reason`` is the choice's last."""

    choice: int
    chunk: Chunk


class _Choice:
    def __init__(self, choice_id: int, decoding: Decoding, on_finished: Optional[Callable[[Generation], None]]):
        self.id = choice_id
        self.decoding = decoding
        self.on_finished = on_finished


class _Sequence:
    """One state being advanced: a prompt being read for its choices (one or more), a choice
    decoding, or (``settling``) a finished choice's last token being read into its result."""

    def __init__(self, todo: list[int], state: FloatArray, logits: Optional[FloatArray], choices: list[_Choice],
                 checkpoint_in: int = -1, checkpoint: Optional[Callable[[FloatArray], None]] = None):
        self.todo = todo  # tokens to read before the next sample
        self.state = state  # owned: updated in place by each pass
        self.logits = logits
        self.choices = choices
        self.checkpoint_in = checkpoint_in  # todo tokens left to the checkpoint (-1: none)
        self.checkpoint = checkpoint
        self.settling: Optional[Generation] = None
        self.settled: Optional[Callable[[Generation], None]] = None
        self.read_at = 0  # the pass that last read some of its tokens


class BatchGenerator:
    """Generates many choices at once with one model (see :mod:`rwkvcpp.batch`).

    ``max_batch``: the most sequences in one pass (None: no bound); the others wait, oldest
    first. ``prompt_chunk``: the most prompt tokens read per pass, over all prompts (None: whole
    prompts in one pass). ``max_batch`` changes only how the work is cut into passes; a prompt
    read in pieces ends in a state equal to reading it whole up to float rounding (as
    ``eval_sequence`` on the pieces would), so a sampled token can differ where two were
    nearly tied.
    """

    def __init__(self, model: Model, tokenizer: Union[Tokenizer, StrPath, None] = None, *,
                 max_batch: Optional[int] = None, prompt_chunk: Optional[int] = None):
        for name, value in (("max_batch", max_batch), ("prompt_chunk", prompt_chunk)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, not {value!r}")
        self._generator = Generator(model, tokenizer)
        self.model = model
        self.tokenizer = self._generator.tokenizer
        self.max_batch = max_batch
        self.prompt_chunk = prompt_chunk
        self._sequences: list[_Sequence] = []
        self._ids = itertools.count()
        self._passes = 0

    def __len__(self) -> int:
        """Sequences in the batch (a prompt with several choices counts once until it is read)."""
        return len(self._sequences)

    @property
    def choices(self) -> int:
        """Choices not yet finished."""
        return sum(len(s.choices) for s in self._sequences)

    def add(self, prompt: Prompt, params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
            state: Optional[FloatArray] = None, *, logits: Optional[FloatArray] = None,
            checkpoint: Optional[Callable[[FloatArray], None]] = None,
            on_finished: Optional[Callable[[Generation], None]] = None) -> list[int]:
        """Adds a prompt (text or token ids) with one choice per SamplingParams (one, or a list)
        and returns the choices' ids. ``state`` (not modified) and ``logits`` are as
        :meth:`Generator.stream <rwkvcpp.generate.Generator.stream>` takes them.

        ``checkpoint(state)``, if given, is called with a copy of the state after all of the
        prompt but its last token (a prompt cache keeps it: a retry, or a prompt that goes on
        differently, starts there). ``on_finished(result)``, if given, is called once each
        choice's result is settled: its last token read into ``result.state`` within the batch's
        passes, so reading the state costs the caller nothing.
        """
        if params is None:
            params = SamplingParams()
        choice_params = [params] if isinstance(params, SamplingParams) else list(params)
        if not choice_params:
            raise ValueError("params is an empty list: a prompt needs at least one choice")
        if not all(isinstance(p, SamplingParams) for p in choice_params):
            raise TypeError("params must be a SamplingParams or a list of them")
        ids = self._generator.encode(prompt)
        n_vocab = self.model.n_vocab
        samplers = [Sampler(p, n_vocab) for p in choice_params]
        if not ids and logits is None:
            raise ValueError("the prompt is empty: give some text, or the logits that go with the state to continue")
        if logits is not None:
            logits = np.array(logits, dtype=np.float32)
            if logits.shape != (n_vocab,):
                raise ValueError(f"logits must have shape ({n_vocab},), got {logits.shape}")
        if state is not None:
            self.model._check_state(state, "state")
            own_state = np.array(state, dtype=np.float32)
        else:
            own_state = self.model.init_state()
        for sampler in samplers:
            sampler.observe_prompt(ids)

        started = time.perf_counter()
        choices = []
        for p, sampler in zip(choice_params, samplers):
            decoding = Decoding(self.model, self.tokenizer, p, sampler, len(ids), started)
            choices.append(_Choice(next(self._ids), decoding, on_finished))
        checkpoint_in = len(ids) - 1 if checkpoint is not None and len(ids) > 1 else -1
        self._sequences.append(_Sequence(ids, own_state, logits, choices, checkpoint_in, checkpoint))
        return [c.id for c in choices]

    def cancel(self, choice_ids: Iterable[int]) -> None:
        """Removes these choices (unknown or finished ones are ignored); a prompt whose choices
        are all cancelled is not read any further."""
        gone = set(choice_ids)
        for seq in self._sequences:
            seq.choices = [c for c in seq.choices if c.id not in gone]
        self._sequences = [s for s in self._sequences if s.choices or s.settling is not None]

    # ---- one step --------------------------------------------------------------------------------

    def step(self) -> list[Event]:
        """One pass over the weights for the sequences that fit, then a token sampled for every
        choice whose logits are ready. Returns the chunks, in the order the choices were added."""
        events: list[Event] = []
        # A prompt given its logits already (an empty prompt) samples without a pass.
        for seq in [s for s in self._sequences if not s.todo and s.logits is not None]:
            events.extend(self._sample(seq))
        batch, counts = self._plan()
        if batch:
            self._read(batch, counts)
            for seq, count in zip(batch, counts):
                del seq.todo[:count]
                if seq.checkpoint_in > 0:
                    seq.checkpoint_in -= count
                    if seq.checkpoint_in == 0 and seq.checkpoint is not None:  # (set with checkpoint_in)
                        seq.checkpoint(seq.state.copy())
                if not seq.todo:
                    if seq.settling is not None:
                        self._settle(seq)
                    else:
                        events.extend(self._sample(seq))
        events.sort(key=lambda e: e.choice)
        return events

    def run(self) -> Iterator[Event]:
        """Steps until every choice has finished, yielding each step's events."""
        while self._sequences:
            yield from self.step()

    def _plan(self) -> tuple[list[_Sequence], list[int]]:
        """The sequences of the next pass and how many tokens each reads: decoding ones first
        (one token each), then prompts within ``prompt_chunk`` tokens, the one that read longest
        ago first (so a short prompt never waits for a long one to be read). A prompt reads its
        next piece whole or not at all: ``prompt_chunk`` tokens, fewer at the checkpoint or the
        end. Its pieces, and so its state to the bit, do not depend on what else is in the batch."""
        limit = self.max_batch if self.max_batch is not None else len(self._sequences)
        budget = self.prompt_chunk
        batch: list[_Sequence] = []
        counts: list[int] = []
        decoding = [s for s in self._sequences if len(s.todo) == 1]
        prompts = sorted((s for s in self._sequences if len(s.todo) > 1), key=lambda s: s.read_at)  # stable
        for seq in decoding + prompts:
            if len(batch) == limit:
                break
            count = len(seq.todo)
            if seq.checkpoint_in > 0:
                count = min(count, seq.checkpoint_in)
            if count > 1 and budget is not None and self.prompt_chunk is not None:  # (both or neither)
                count = min(count, self.prompt_chunk)
                if count > budget:
                    continue
                budget -= count
            batch.append(seq)
            counts.append(count)
        self._passes += 1
        for seq in batch:
            seq.read_at = self._passes
        return batch, counts

    def _read(self, batch: list[_Sequence], counts: list[int]) -> None:
        """The pass: each sequence reads its tokens, its state updated in place; logits where
        they will be sampled from (or settle a result), none for a prompt read only in part."""
        tokens: list[TokenArray] = []
        logits: list[Optional[FloatArray]] = []
        for seq, count in zip(batch, counts):
            tokens.append(np.asarray(seq.todo[:count], dtype=np.int32))
            if count < len(seq.todo):
                logits.append(None)
            else:
                if seq.logits is None or seq.logits.base is not None:
                    seq.logits = np.empty(self.model.n_vocab, np.float32)
                logits.append(seq.logits)
        self.model._eval_rows(tokens, [s.state for s in batch], logits)

    def _sample(self, seq: _Sequence) -> list[Event]:
        """Each of the sequence's choices samples from its logits. A prompt with several choices
        splits here, each choice with its own copy of the state."""
        assert seq.logits is not None
        events = []
        if len(seq.choices) > 1:
            parts = [seq] + [_Sequence([], seq.state.copy(), seq.logits.copy(), [c]) for c in seq.choices[1:]]
            seq.choices = seq.choices[:1]
            at = self._sequences.index(seq)
            self._sequences[at + 1:at + 1] = parts[1:]
        else:
            parts = [seq]
        for part in parts:
            choice = part.choices[0]
            assert part.logits is not None  # the sequence's, or a copy of them
            chunk = choice.decoding.step(part.state, part.logits)
            events.append(Event(choice.id, chunk))
            if chunk.finish_reason is None:
                assert chunk.token is not None  # only a last chunk can lack a token
                part.todo = [chunk.token]
                continue
            part.choices = []
            result = chunk.result
            if choice.on_finished is not None and result is not None and result._unevaluated:
                # The result keeps this state and logits; the last token is read in the next
                # pass into copies, which then become the result's.
                part.settling, part.settled = result, choice.on_finished
                part.todo = list(result._unevaluated)
                part.state, part.logits = part.state.copy(), None
            else:
                self._sequences.remove(part)
                if choice.on_finished is not None and result is not None:
                    choice.on_finished(result)
        return events

    def _settle(self, seq: _Sequence) -> None:
        result, on_finished = seq.settling, seq.settled
        assert result is not None and on_finished is not None and seq.logits is not None
        result._settle(seq.state, seq.logits)
        self._sequences.remove(seq)
        on_finished(result)


def generate_batch(model: Model, prompts: Sequence[Prompt], params: Union[SamplingParams, Sequence[SamplingParams]],
                   state: Optional[FloatArray] = None, *, tokenizer: Union[Tokenizer, StrPath, None] = None,
                   logits: Optional[FloatArray] = None, max_batch: Optional[int] = None) -> list[Generation]:
    """The results of one choice per prompt (``params``: one SamplingParams for all, or one per
    prompt), generated together; each prompt starts from ``state``."""
    if isinstance(params, SamplingParams):
        params = [params] * len(prompts)
    elif len(params) != len(prompts):
        raise ValueError(f"{len(params)} SamplingParams for {len(prompts)} prompts")
    batch = BatchGenerator(model, tokenizer, max_batch=max_batch)
    order = [batch.add(p, sp, state, logits=logits)[0] for p, sp in zip(prompts, params)]
    results: dict[int, Generation] = {}
    for event in batch.run():
        if event.chunk.result is not None:
            results[event.choice] = event.chunk.result
    return [results[i] for i in order]
