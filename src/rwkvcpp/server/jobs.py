"""What the routes and the scheduler say to each other: the whole interface between them.

A route submits work and reads what it yields::

    job = scheduler.submit(Generate(prompts, params))   # or Embed(inputs); an OpenAIError 503 when full
    try:
        async for item in job.items(request):    # PromptRead, then Piece after Piece; or Vector
            ...
    finally:
        job.cancel()                              # always: frees the slot at once if still running

``items`` raises the job's error, if it failed. Given the ``request``, it also watches the client
and ends early when it goes away (for non-streaming requests; a stream's end is noticed by the
response). Any scheduler that keeps this contract can replace :mod:`.scheduler` without a
route changing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, NamedTuple, Optional, Protocol, Sequence, Union

import numpy as np

from ..completion import Piece, PromptRead
from ..sampling import SamplingParams

__all__ = ["Generate", "Embed", "PromptRead", "Piece", "Vector", "Item", "Job", "Scheduler"]


# ---- work ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Generate:
    """``len(params)`` choices for each prompt; choice ``i`` of prompt ``p`` is choice number
    ``p * len(params) + i`` of the response. The token lists are checked already. ``start``: the
    state every prompt continues (a saved session's), instead of the server's initial state;
    such prompts bypass the state cache, which holds states grown from the initial one."""

    prompts: Sequence[Sequence[int]]
    params: Sequence[SamplingParams]
    start: Optional[np.ndarray] = None


@dataclass(frozen=True)
class Embed:
    """One embedding per input (checked token lists)."""

    inputs: Sequence[Sequence[int]]


# ---- what comes back -----------------------------------------------------------------------------


# PromptRead and Piece (a prompt was read; the next text of a choice) are rwkvcpp.completion's:
# the Python API folds the same items into the same choices.


class Vector(NamedTuple):
    """The embedding of input number ``index``."""

    index: int
    vector: np.ndarray


Item = Union[PromptRead, Piece, Vector]


# ---- the contract --------------------------------------------------------------------------------


class Job(Protocol):
    def items(self, request=None) -> AsyncIterator[Item]: ...

    def cancel(self) -> None: ...


class Scheduler(Protocol):
    def submit(self, work: Union[Generate, Embed]) -> Job:
        """Admits ``work`` or raises OpenAIError 503 (busy, or shutting down). Called on the event loop."""

    def stats(self) -> dict:
        """Counts for /health (running, waiting, ...)."""

    def shutdown(self) -> None:
        """Stops every job; called once when the app stops."""
