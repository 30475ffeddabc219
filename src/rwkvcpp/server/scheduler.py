"""The scheduler: one engine thread steps every running request together (continuous batching;
see :mod:`.jobs` for the contract with the routes).

* Each step is one pass over the weights for every sequence in the batch
  (:class:`~rwkvcpp.batch.BatchGenerator`): the choices decoding a token each, and prompts being
  read, ``prompt_chunk`` tokens per step in all, taking turns, so a long prompt never stalls the
  others for long.
* At most ``parallel`` sequences are in the batch (a request's ``n`` choices are ``n``
  sequences) and ``max_concurrent`` requests running; ``max_queue`` more wait, oldest first;
  beyond that ``submit`` answers 503. A waiting request joins at the next step once a sequence
  is free: a short request never waits for a long one to finish while there is room.
* A finished request leaves the batch at once; ``cancel`` (a client that went away) takes effect
  at the next step, and frees the request's place in the queue at once.
* Items go to the event loop through an asyncio queue per job: the event loop never waits on
  the model. Embeddings run in the same thread, one input between two steps.
* The state cache works as before: a prompt starts from its longest cached prefix; the state
  after the prompt minus its last token, and after each finished reply, is cached (a reply's last
  token is read into its state in the next step, batched with the others, before its last piece
  goes out, so the next turn of a chat finds it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
from collections import deque
from typing import Optional, Union

from fastapi import Request

from ..batch import BatchGenerator, Event
from ..completion import Piece, PromptRead
from ..generate import Generator
from .engine import Engine
from .errors import OpenAIError
from .jobs import Embed, Generate, Vector

__all__ = ["Job", "BatchScheduler", "fit_in_memory"]

log = logging.getLogger("rwkvcpp.server")


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class Job:
    """One admitted request: the engine thread calls ``emit`` with each item, the event loop
    reads them from ``items``; ``cancel`` frees the request's place at once and tells the engine
    to drop it at its next step."""

    def __init__(self, scheduler: BatchScheduler, loop: asyncio.AbstractEventLoop, work: Union[Generate, Embed]):
        self.scheduler = scheduler
        self.loop = loop
        self.work = work
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.released = False

    def emit(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()
        self.scheduler._release(self)

    async def items(self, request: Optional[Request] = None, poll_seconds: float = 0.25):
        """The job's items in order. With ``request``, a client that disconnects while this
        runs cancels the job (for non-streaming requests, which nothing else watches): the
        items then simply end."""
        watcher = asyncio.ensure_future(self._watch(request, poll_seconds)) if request is not None else None
        try:
            while True:
                item = await self.queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _watch(self, request: Request, poll_seconds: float) -> None:
        while not self.cancelled.is_set():
            await asyncio.sleep(poll_seconds)
            if await request.is_disconnected():
                self.cancel()
                self.queue.put_nowait(_END)
                return


class _Running:
    """A job the engine thread has started: the prompts not yet in the batch, its choices in
    the batch, and last pieces held until their reply's state is cached."""

    def __init__(self, job: Job):
        self.job = job
        self.work = job.work
        self.generator = None  # a Generate job's, as it was when the job started
        self.next_prompt = 0  # Generate: prompts before this one are in the batch; Embed: inputs done
        self.choices: dict[int, int] = {}  # the batch's choice id -> the response's choice number
        self.held: dict[int, Piece] = {}  # id(result) -> a choice's last piece, until its reply is cached
        self.settled: set[int] = set()  # id(result) of replies cached before their last piece was seen
        self.finished = 0  # choices whose last piece went out
        self.cacheable = False  # its replies' states go in the state cache

    @property
    def total(self) -> int:
        work = self.work
        return len(work.prompts) * len(work.params) if isinstance(work, Generate) else len(work.inputs)

    @property
    def prompts_left(self) -> bool:
        return isinstance(self.work, Generate) and self.next_prompt < len(self.work.prompts)


class _Streams:
    """The batch of a generator that cannot be batched (a stand-in with only ``stream()``, as
    tests install): each step takes the next chunk of each of its streams. Same interface as
    :class:`~rwkvcpp.batch.BatchGenerator`."""

    def __init__(self, generator):
        self.generator = generator
        self._streams: dict[int, tuple] = {}  # choice id -> (chunk iterator, on_finished)
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._streams)

    @property
    def choices(self) -> int:
        return len(self._streams)

    def add(self, prompt, params, state=None, *, checkpoint=None, on_finished=None) -> list[int]:
        ids = []
        for p in params:
            choice = next(self._ids)
            self._streams[choice] = (self.generator.stream(prompt, p, state), on_finished)
            ids.append(choice)
        return ids

    def step(self) -> list[Event]:
        events = []
        for choice, (stream, on_finished) in list(self._streams.items()):
            chunk = next(stream)
            events.append(Event(choice, chunk))
            if chunk.finish_reason is not None:
                del self._streams[choice]
                if on_finished is not None and chunk.result is not None:
                    on_finished(chunk.result)
        return events

    def cancel(self, choice_ids) -> None:
        for choice in choice_ids:
            entry = self._streams.pop(choice, None)
            if entry is not None:
                entry[0].close()


class BatchScheduler:
    """The engine thread and the bounded, first-come-first-served queue in front of it."""

    def __init__(self, engine: Engine, max_concurrent: int, max_queue: int, parallel: int, prompt_chunk: int):
        self.engine = engine
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.parallel = parallel
        self.prompt_chunk = prompt_chunk
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()  # admitted, not yet started
        self._stopping = False
        self.admitted = 0  # running or waiting, not yet released
        self.running = 0  # jobs the engine thread runs (a cancelled one until its next step)
        self.steps = 0  # passes over the weights so far
        self.sequences = 0  # sequences (prompts being read, choices decoding) in the last step
        # the engine thread's own
        self._jobs: list[_Running] = []  # started, oldest first
        self._batches: dict[object, Union[BatchGenerator, _Streams]] = {}  # generator -> its batch
        self._owner: dict[tuple, _Running] = {}  # (generator, choice id in its batch) -> the choice's job
        self._thread = threading.Thread(target=self._loop, name="rwkvcpp-engine", daemon=True)
        self._thread.start()

    # -- the event loop's side ---------------------------------------------------------------

    def submit(self, work: Union[Generate, Embed]) -> Job:
        """Admits ``work`` or raises a 503."""
        job = Job(self, asyncio.get_running_loop(), work)
        with self._lock:
            if self._stopping:
                raise _shutting_down()
            if self.admitted >= self.max_concurrent + self.max_queue:
                raise OpenAIError(
                    503,
                    f"the server is busy: {self.max_concurrent} requests are running and {self.max_queue} "
                    "waiting, the most it takes; retry shortly",
                    type="server_error", code="server_busy", headers={"Retry-After": "1"},
                )
            self.admitted += 1
            self._waiting.append(job)
            self._lock.notify()
        return job

    def stats(self) -> dict:
        with self._lock:
            return {"running": self.running, "waiting": len(self._waiting), "admitted": self.admitted,
                    "max_concurrent": self.max_concurrent, "max_queue": self.max_queue,
                    "parallel": self.parallel, "prompt_chunk": self.prompt_chunk,
                    "sequences": self.sequences, "steps": self.steps}

    def shutdown(self) -> None:
        """Stops every job (a running one after the step in progress) and the engine thread."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        self._thread.join(timeout=10)

    def _release(self, job: Job) -> None:
        with self._lock:
            if not job.released:
                job.released = True
                self.admitted -= 1
            self._lock.notify()  # a cancel: the engine thread drops it at its next step

    # -- the engine thread -------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._stopping and not self._waiting and not self._jobs:
                        self.sequences = 0
                        self._lock.wait()
                    if self._stopping:
                        return
                self._drop_cancelled()
                self._admit()
                self._embed_next()
                self._step()
        except BaseException:
            log.exception("the engine thread failed; the server answers 503 from now on")
            raise
        finally:
            self._stop_all()

    def _free(self) -> int:
        """Sequences that may still join the batch."""
        return self.parallel - sum(batch.choices for batch in self._batches.values())

    def _admit(self) -> None:
        """First come, first served: the prompts of running jobs, then waiting jobs, each as
        long as a sequence is free (a prompt's ``n`` choices join together, so a step may hold
        up to ``parallel + n - 1``)."""
        for running in list(self._jobs):
            while running.prompts_left and running in self._jobs:
                if self._free() <= 0:
                    return
                self._start_prompt(running)
        while len(self._jobs) < self.max_concurrent:
            with self._lock:
                if not self._waiting or (isinstance(self._waiting[0].work, Generate) and self._free() <= 0):
                    return
                job = self._waiting.popleft()
                if job.cancelled.is_set():
                    job.emit(_END)
                    continue
                self.running += 1
            running = _Running(job)
            self._jobs.append(running)
            if isinstance(job.work, Generate):
                running.generator = self.engine.generator  # as it is now, even if replaced later
                self._start_prompt(running)  # the others as sequences free up

    def _batch(self, generator) -> Union[BatchGenerator, _Streams]:
        batch = self._batches.get(generator)
        if batch is None:
            if isinstance(generator, Generator):
                batch = BatchGenerator(generator.model, generator.tokenizer, prompt_chunk=self.prompt_chunk)
            else:
                batch = _Streams(generator)
            self._batches[generator] = batch
        return batch

    def _start_prompt(self, running: _Running) -> None:
        """Puts the job's next prompt, with its ``n`` choices, in the batch."""
        work, engine = running.work, self.engine
        p = running.next_prompt
        running.next_prompt += 1
        ids, n = list(work.prompts[p]), len(work.params)
        try:
            cached, state, todo, cacheable = engine.prompt_start(ids, work.params[0].count_prompt, work.start)
            running.job.emit(PromptRead(p, cached))
            checkpoint = on_finished = None
            running.cacheable = cacheable
            if cacheable:
                def checkpoint(state, ids=ids):
                    engine.prompt_read(ids, state)

                def on_finished(result, ids=ids):
                    engine.reply_finished(ids, result)
                    self._settled(running, id(result))
            batch = self._batch(running.generator)
            choices = batch.add(todo, list(work.params), state, checkpoint=checkpoint, on_finished=on_finished)
        except Exception as error:  # this request's own (a bad state): it alone fails
            self._end(running, error)
            return
        for i, choice in enumerate(choices):
            running.choices[choice] = p * n + i
            self._owner[running.generator, choice] = running

    def _embed_next(self) -> None:
        """One input of the oldest embedding job, between two steps."""
        for running in self._jobs:
            if isinstance(running.work, Embed) and not running.job.cancelled.is_set():
                i = running.next_prompt
                ids = running.work.inputs[i]
                try:
                    vector = self.engine.model.embed(ids)
                except Exception as error:
                    self._end(running, error)
                    return
                self.engine.count(embedding_tokens=len(ids))
                running.job.emit(Vector(i, vector))
                running.next_prompt += 1
                running.finished += 1
                if running.finished == running.total:
                    self._end(running)
                return

    def _step(self) -> None:
        """One pass of each batch (one unless the generator was replaced), its pieces sent."""
        sequences = sum(len(batch) for batch in self._batches.values())
        with self._lock:
            self.sequences = sequences
        for generator, batch in list(self._batches.items()):
            if not len(batch):
                if generator is not self.engine.generator:
                    del self._batches[generator]  # a replaced generator's, now empty
                continue
            try:
                events = batch.step()
            except Exception as error:  # the pass or a sampler failed: every job in it fails
                del self._batches[generator]
                for running in [r for r in self._jobs if r.generator is generator]:
                    self._end(running, error)
                continue
            with self._lock:
                self.steps += 1
            for event in events:
                self._piece(generator, event)

    def _piece(self, generator, event: Event) -> None:
        running = self._owner.get((generator, event.choice))
        if running is None:  # a cancelled job's
            return
        chunk = event.chunk
        result = chunk.result
        tokens = 0
        if chunk.finish_reason is not None:
            tokens = getattr(result, "completion_tokens", 0) or 0
            self.engine.count(completion_tokens=tokens)
        piece = Piece(running.choices[event.choice], chunk.text, chunk.finish_reason, tokens, chunk.logprob)
        if chunk.finish_reason is None:
            running.job.emit(piece)
            return
        del self._owner[generator, event.choice]
        if self._holds(running, result):
            running.held[id(result)] = piece  # goes out once the reply's state is cached
        else:
            self._last_piece(running, piece)

    def _holds(self, running: _Running, result) -> bool:
        """Whether the last piece of ``result`` waits for its reply's state to be cached (the
        batch reads its last token in the next step, then calls ``on_finished``)."""
        if id(result) in running.settled:  # cached already
            running.settled.discard(id(result))
            return False
        return running.cacheable and result is not None

    def _settled(self, running: _Running, key: int) -> None:
        piece = running.held.pop(key, None)
        if piece is None:  # settled in the step that sampled it: the piece is not seen yet
            running.settled.add(key)
        else:
            self._last_piece(running, piece)

    def _last_piece(self, running: _Running, piece: Piece) -> None:
        running.job.emit(piece)
        running.finished += 1
        if running.finished == running.total:
            self._end(running)

    def _drop_cancelled(self) -> None:
        for running in [r for r in self._jobs if r.job.cancelled.is_set()]:
            self._end(running)

    def _end(self, running: _Running, error: Optional[BaseException] = None) -> None:
        """The job leaves: its choices still in a batch are cancelled, its items end."""
        if running not in self._jobs:
            return
        self._jobs.remove(running)
        live = [c for c in running.choices if self._owner.get((running.generator, c)) is running]
        for choice in live:
            del self._owner[running.generator, choice]
        if live and running.generator is not None:
            batch = self._batches.get(running.generator)
            if batch is not None:
                batch.cancel(live)
        with self._lock:
            self.running -= 1
        self._release(running.job)  # before the items end: a client that saw its answer sees the place free
        if error is not None:
            running.job.emit(_Failure(error))
        running.job.emit(_END)

    def _stop_all(self) -> None:
        """Every job ends, with a 503 saying the server is shutting down (a stream passes it on
        as an error event)."""
        with self._lock:
            self._stopping = True
            waiting, self._waiting = list(self._waiting), deque()
        for running in list(self._jobs):
            self._end(running, _shutting_down())
        for job in waiting:
            self._release(job)
            job.emit(_Failure(_shutting_down()))
            job.emit(_END)
        for batch in self._batches.values():
            if isinstance(batch, _Streams):
                batch.cancel(list(batch._streams))
        self._batches.clear()


def _shutting_down() -> OpenAIError:
    return OpenAIError(503, "the server is shutting down", type="server_error", code="shutting_down")


def fit_in_memory(model, parallel: int) -> int:
    """``parallel``, lowered so that the batch's states and logits take at most an eighth of
    the memory available now (never below 1)."""
    available = _available_memory()
    if available is None:
        return parallel
    per_sequence = 4 * (model.state_len + model.n_vocab) * 2  # the state and logits, and a copy of each
    fits = max(1, available // 8 // per_sequence)
    if fits < parallel:
        log.warning("parallel lowered from %d to %d: the states of more sequences would not fit in memory",
                    parallel, fits)
    return min(parallel, fits)


def _available_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation (Linux's MemAvailable, which counts the
    page cache it can drop; else the free pages), or None where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
