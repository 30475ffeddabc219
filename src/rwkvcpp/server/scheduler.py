"""Today's scheduler: one worker thread per running job (see :mod:`.jobs` for the contract).

* At most ``max_concurrent`` jobs run at once and ``max_queue`` more wait; beyond that
  ``submit`` answers 503.
* A worker runs its job's choices one after another (the engine releases the GIL; one model
  serialises its evaluations, so concurrent jobs interleave token by token) and hands each item
  to the event loop through an asyncio queue: the event loop never waits on the model.
* ``cancel`` frees the slot at once; the worker stops before its next token.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Union

from fastapi import Request

from .engine import Engine
from .errors import OpenAIError
from ..completion import generate_items
from .jobs import Embed, Generate, Vector

__all__ = ["Job", "ThreadScheduler"]


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class Job:
    """One admitted request: the worker calls ``emit`` with each item, the event loop reads
    them from ``items``; ``cancel`` frees the slot at once and tells the worker to stop."""

    def __init__(self, scheduler: ThreadScheduler, loop: asyncio.AbstractEventLoop):
        self.scheduler = scheduler
        self.loop = loop
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
        """The worker's items in order. With ``request``, a client that disconnects while this
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


class ThreadScheduler:
    """Worker threads for the engine's evaluations, with a bounded number of jobs admitted."""

    def __init__(self, engine: Engine, max_concurrent: int, max_queue: int):
        self.engine = engine
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._executor = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="rwkvcpp-worker")
        self._lock = threading.Lock()
        self.admitted = 0  # running or waiting, not yet released
        self.running = 0  # worker threads busy with a job (a cancelled one until it notices)
        self._jobs: weakref.WeakSet[Job] = weakref.WeakSet()

    def submit(self, work: Union[Generate, Embed]) -> Job:
        """Admits ``work`` or raises a 503."""
        if isinstance(work, Generate):
            generator = self.engine.generator  # as it is now, even if replaced while this runs

            def run(job: Job) -> None:
                self._generate(job, generator, work)
        else:

            def run(job: Job) -> None:
                self._embed(job, work)

        loop = asyncio.get_running_loop()
        with self._lock:
            if self.admitted >= self.max_concurrent + self.max_queue:
                raise OpenAIError(
                    503,
                    f"the server is busy: {self.max_concurrent} requests are running and {self.max_queue} "
                    "waiting, the most it takes; retry shortly",
                    type="server_error", code="server_busy", headers={"Retry-After": "1"},
                )
            self.admitted += 1
        job = Job(self, loop)
        with self._lock:
            self._jobs.add(job)
        try:
            self._executor.submit(self._run, job, run)
        except RuntimeError:  # executor shut down
            self._release(job)
            raise OpenAIError(503, "the server is shutting down", type="server_error", code="shutting_down") from None
        return job

    def stats(self) -> dict:
        with self._lock:
            return {"running": self.running, "waiting": max(0, self.admitted - self.running),
                    "admitted": self.admitted, "max_concurrent": self.max_concurrent, "max_queue": self.max_queue}

    def shutdown(self) -> None:
        """Stops every job (each at its next token; its items end with a 503 saying the server is
        shutting down, which a stream passes on as an error event) and the workers."""
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancelled.set()
            job.emit(_Failure(OpenAIError(503, "the server is shutting down", type="server_error",
                                          code="shutting_down")))
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the worker's side -------------------------------------------------------------------

    def _run(self, job: Job, run: Callable[[Job], None]) -> None:
        started = False
        try:
            if job.cancelled.is_set():
                return
            with self._lock:
                self.running += 1
                started = True
            run(job)
        except BaseException as e:  # passed on to the request, which answers with it
            job.emit(_Failure(e))
        finally:
            if started:
                with self._lock:
                    self.running -= 1
            self._release(job)
            job.emit(_END)

    def _release(self, job: Job) -> None:
        with self._lock:
            if not job.released:
                job.released = True
                self.admitted -= 1

    def _generate(self, job: Job, generator, work: Generate) -> None:
        items = generate_items(generator, work.prompts, work.params, self.engine, work.start)
        try:
            for item in items:
                if job.cancelled.is_set():
                    return
                job.emit(item)
        finally:
            items.close()

    def _embed(self, job: Job, work: Embed) -> None:
        engine = self.engine
        for i, ids in enumerate(work.inputs):
            if job.cancelled.is_set():
                return
            vector = engine.model.embed(ids)
            engine.count(embedding_tokens=len(ids))
            job.emit(Vector(i, vector))
