"""What a worker does to a shard's records with its one model, batched.

Each task turns records into output rows, in record order, every row with the same fields:
``index``, the kept fields, the task's results (None for a record with an ``error``), ``error``.

* ``embed``: ``embedding``, the record's sentence embedding (:meth:`rwkvcpp.Model.embed`, groups
  of records in shared passes);
* ``perplexity``: ``loss`` (mean nats per token over the record's tokens after its first),
  ``perplexity`` and ``tokens`` (how many were scored); records are read together, ``chunk``
  tokens of each per pass (:meth:`rwkvcpp.Model.eval_batch` with all logits), records joining
  as others end;
* ``generate``: ``completion``, ``finish_reason``, ``prompt_tokens``, ``completion_tokens``; the
  records' generations stepped together (:class:`rwkvcpp.BatchGenerator`). With a seed, record
  ``i`` samples with seed + i, so its text does not depend on which worker ran it.

A record's results never depend on the others in its batch: every sequence of a batched pass gets
the logits it would get alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable
from typing import Optional

import numpy as np

from .records import Record

__all__ = ["TASKS", "Task", "token_losses"]


def token_losses(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) for each row of logits, in float64."""
    x = logits.astype(np.float64)
    top = x.max(axis=1)
    lse = top + np.log(np.exp(x - top[:, None]).sum(axis=1))
    return lse - x[np.arange(len(targets)), targets]


class Task:
    """One kind of work. ``settings`` are the task's own (they decide its results and are kept
    in the job's manifest); ``batch_size`` is how many records share a pass (it does not)."""

    name = ""
    result_fields: tuple = ()
    defaults: dict = {}

    def __init__(self, model, settings: dict, batch_size: int):
        self.model = model
        self.tokenizer = model.tokenizer
        self.settings = {**self.defaults, **settings}
        self.batch_size = batch_size

    @classmethod
    def check_settings(cls, settings: dict) -> dict:
        """The settings with defaults filled in; ValueError for a bad one."""
        unknown = set(settings) - set(cls.defaults)
        if unknown:
            raise ValueError(f"{cls.name}: unknown setting(s) {', '.join(sorted(unknown))}")
        return {**cls.defaults, **settings}

    def run(self, records: list[Record], done: Callable[[int], None]) -> list[dict]:
        """The rows of ``records``; ``done(n)`` after each n records finished."""
        results: dict[int, dict] = {}
        usable = []
        for record in records:
            if record.error is not None:
                results[record.index] = {"error": record.error}
            else:
                usable.append(record)
        if len(usable) < len(records):
            done(len(records) - len(usable))
        self._compute(usable, results, done)
        return [self._row(r, results[r.index]) for r in records]

    def _compute(self, records: list[Record], results: dict, done: Callable[[int], None]) -> None:
        raise NotImplementedError

    def _row(self, record: Record, result: dict) -> dict:
        row = {"index": record.index, **record.fields}
        for name in self.result_fields:
            row[name] = result.get(name)
        row["error"] = result.get("error")
        return row


class Embed(Task):
    name = "embed"
    result_fields = ("embedding",)
    defaults = {"normalize": True}

    def _compute(self, records, results, done):
        ids = [self.tokenizer.encode(r.text) for r in records]
        todo = []
        for record, tokens in zip(records, ids):
            if tokens:
                todo.append((record, tokens))
            else:
                results[record.index] = {"error": "the text is empty: there is nothing to read"}
        if len(todo) < len(records):
            done(len(records) - len(todo))
        for at in range(0, len(todo), self.batch_size):
            group = todo[at:at + self.batch_size]
            vectors = self.model.embed([tokens for _, tokens in group], normalize=self.settings["normalize"])
            for (record, _), vector in zip(group, vectors):
                results[record.index] = {"embedding": vector.tolist()}
            done(len(group))


class _Scoring:
    """One record being scored: its tokens, how far it has been read, its state, its loss."""

    def __init__(self, record: Record, tokens: np.ndarray, state: np.ndarray):
        self.record = record
        self.tokens = tokens
        self.read = 0
        self.state = state
        self.loss_sum = 0.0


class Perplexity(Task):
    name = "perplexity"
    result_fields = ("loss", "perplexity", "tokens")
    defaults = {"chunk": 128}

    @classmethod
    def check_settings(cls, settings):
        settings = super().check_settings(settings)
        chunk = settings["chunk"]
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be a positive integer, not {chunk!r}")
        return settings

    def _compute(self, records, results, done):
        chunk = self.settings["chunk"]
        waiting = deque()
        for record in records:
            tokens = np.asarray(self.tokenizer.encode(record.text), dtype=np.int64)
            if len(tokens) < 2:
                results[record.index] = {"error": f"{len(tokens)} token(s): perplexity needs at least 2"}
                done(1)
            else:
                waiting.append((record, tokens))
        active: list[_Scoring] = []
        while waiting or active:
            while waiting and len(active) < self.batch_size:
                record, tokens = waiting.popleft()
                active.append(_Scoring(record, tokens, self.model.init_state()))
            # Each record reads its next chunk of inputs; the last token is only a target.
            pieces = [s.tokens[s.read:min(s.read + chunk, len(s.tokens) - 1)] for s in active]
            states = [s.state for s in active]
            logits, _ = self.model.eval_batch(pieces, states, all_logits=True, states_out=states)
            for scoring, piece, piece_logits in zip(active, pieces, logits):
                targets = scoring.tokens[scoring.read + 1:scoring.read + 1 + len(piece)]
                scoring.loss_sum += float(token_losses(piece_logits, targets).sum())
                scoring.read += len(piece)
            finished = [s for s in active if s.read == len(s.tokens) - 1]
            for s in finished:
                loss = s.loss_sum / s.read
                results[s.record.index] = {"loss": loss, "perplexity": math.exp(loss), "tokens": s.read}
            if finished:
                active = [s for s in active if s.read < len(s.tokens) - 1]
                done(len(finished))


# The sampling settings of a generate job, as SamplingParams names them.
SAMPLING_SETTINGS = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                     "penalty_decay", "stop", "max_tokens")


class Generate(Task):
    name = "generate"
    result_fields = ("completion", "finish_reason", "prompt_tokens", "completion_tokens")
    defaults = {"seed": None, **{name: None for name in SAMPLING_SETTINGS}}

    @classmethod
    def check_settings(cls, settings):
        settings = super().check_settings(settings)
        cls.sampling_params(settings)
        return settings

    @staticmethod
    def sampling_params(settings: dict, stop_tokens=(), seed: Optional[int] = None):
        from ..sampling import SamplingParams

        values = {k: settings[k] for k in SAMPLING_SETTINGS if settings.get(k) is not None}
        values["stop"] = tuple(values.get("stop", ()))
        return SamplingParams(**values, stop_tokens=stop_tokens, seed=seed)

    def _compute(self, records, results, done):
        from ..batch import BatchGenerator
        from ..completion import end_tokens

        base = self.sampling_params(self.settings, end_tokens(self.tokenizer))
        seed = self.settings["seed"]
        batch = BatchGenerator(self.model, self.tokenizer, max_batch=self.batch_size)
        waiting = deque(records)
        owner: dict[int, Record] = {}
        while waiting or batch.choices:
            # Only as many states as one pass takes: the others wait unread.
            while waiting and batch.choices < self.batch_size:
                record = waiting.popleft()
                params = dataclasses.replace(base, seed=None if seed is None else seed + record.index)
                try:
                    (choice,) = batch.add(record.text, params)
                except ValueError as e:  # an empty prompt
                    results[record.index] = {"error": str(e)}
                    done(1)
                    continue
                owner[choice] = record
            for event in batch.step():
                result = event.chunk.result
                if result is not None:
                    results[owner.pop(event.choice).index] = {
                        "completion": result.text, "finish_reason": result.finish_reason,
                        "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                    }
                    done(1)


TASKS: dict[str, type[Task]] = {task.name: task for task in (Embed, Perplexity, Generate)}
