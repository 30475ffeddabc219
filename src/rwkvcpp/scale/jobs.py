"""A corpus job: its settings, its plan, and running it on this machine.

A job writes its output folder as one file per shard plus ``job.json``, the settings that
decide the results (task and its settings, input, field, shard size, model file and identity,
output format). A rerun with the same settings does only the shards that have no file yet; a
rerun with different ones is refused, since its shards would not match the ones there.

Execution: :class:`ShardWorker` loads the model once and does whole shards (read, compute in
batches, write). :func:`run_job` runs one in this process, or several in a process pool, each
with its own model and ``threads`` threads; :func:`rwkvcpp.scale.ray_data.run_job_on_ray` runs
them as Ray Data workers. Either way the same shards get the same bytes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

from .records import Output, Shard, open_input, write_bytes_atomically
from .tasks import TASKS

__all__ = ["Job", "JobSummary", "ShardResult", "ShardWorker", "plan_job", "run_job", "available_cores"]

MANIFEST = "job.json"


@dataclass(frozen=True)
class Job:
    """What to do: ``task`` (``embed``, ``perplexity`` or ``generate``) on the records of
    ``input`` (JSONL, Parquet or a folder of .txt; the text in ``text_field``, the fields ``keep``
    copied to the output) with ``model`` (a .bin path; None for the built-in model), written to
    the folder ``output`` in ``output_format`` (``jsonl`` or ``parquet``), ``shard_size``
    records per file. ``settings`` are the task's (see :mod:`rwkvcpp.scale.tasks`);
    ``batch_size`` records share a pass over the weights."""

    task: str
    input: str
    output: str
    model: Optional[str] = None
    text_field: str = "text"
    keep: tuple = ()
    output_format: str = "jsonl"
    shard_size: int = 1000
    batch_size: int = 16
    settings: dict = field(default_factory=dict)
    tokenizer: Optional[str] = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}")
        for name in ("shard_size", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        task = TASKS[self.task]
        clash = {"index", "error", *task.result_fields} & set(self.keep)
        if clash:
            raise ValueError(f"--keep {sorted(clash)[0]}: the output has a field of that name already")
        if self.model is None:
            from ..data import builtin_model_path

            object.__setattr__(self, "model", os.fspath(builtin_model_path()))
        object.__setattr__(self, "model", os.path.abspath(self.model))
        object.__setattr__(self, "keep", tuple(self.keep))
        object.__setattr__(self, "settings", task.check_settings(dict(self.settings)))


class ShardResult(NamedTuple):
    number: int
    records: int
    errors: int
    seconds: float


@dataclass
class JobSummary:
    shards: int
    written: list = field(default_factory=list)  # shard numbers this run wrote
    skipped: list = field(default_factory=list)  # shard numbers finished before it
    records: int = 0  # records this run wrote
    errors: int = 0  # of which with an error
    seconds: float = 0.0

    def add(self, result: ShardResult) -> None:
        self.written.append(result.number)
        self.records += result.records
        self.errors += result.errors


class Plan(NamedTuple):
    shards: list
    pending: list
    output: Output


def skipped_summary(plan: Plan) -> JobSummary:
    """A summary of nothing done yet: the shards that were there before."""
    pending = {s.number for s in plan.pending}
    return JobSummary(len(plan.shards), skipped=[s.number for s in plan.shards if s.number not in pending])


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def manifest(job: Job, input_kind: str, shards: list) -> dict:
    """The settings that decide a job's output files."""
    from ..state import model_hash

    return {
        "task": job.task, "settings": job.settings,
        "input": os.path.abspath(job.input), "input_kind": input_kind, "field": job.text_field, "keep": list(job.keep),
        "records": sum(s.count for s in shards), "shard_size": job.shard_size, "shards": len(shards),
        "model": job.model, "model_bytes": os.path.getsize(job.model), "model_hash": model_hash(job.model),
        "tokenizer": job.tokenizer, "format": job.output_format,
    }


def plan_job(job: Job) -> Plan:
    """Checks the input and the output folder, writes ``job.json``, and returns the shards and
    the ones not yet written."""
    source = open_input(job.input, job.text_field, job.keep)
    shards = source.plan(job.shard_size)
    if not shards:
        raise ValueError(f"{source.path} holds no records")
    if not os.path.isfile(job.model):
        raise FileNotFoundError(f"{job.model}: no such model file")
    wanted = manifest(job, source.kind, shards)
    output = Output(job.output, job.output_format)
    os.makedirs(output.folder, exist_ok=True)
    path = os.path.join(output.folder, MANIFEST)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
        differ = [k for k in wanted if found.get(k) != wanted[k]]
        if differ:
            raise ValueError(f"{output.folder} holds the output of another job ({', '.join(differ)} differ: "
                             f"{differ[0]} was {found.get(differ[0])!r}, now {wanted[differ[0]]!r}); "
                             "give a new output folder, or delete this one to start over")
    else:
        if any(name.startswith("part-") for name in os.listdir(output.folder)):
            raise ValueError(f"{output.folder} holds part-* files but no {MANIFEST}: give an empty or new folder")
        write_bytes_atomically(path, json.dumps(wanted, indent=1).encode("utf-8"))
    output.remove_temporary()
    return Plan(shards, [s for s in shards if not output.finished(s.number)], output)


class ShardWorker:
    """One worker: the job's model loaded once (``threads`` threads), then whole shards."""

    def __init__(self, job: Job, threads: Optional[int] = None):
        from ..model import Model

        self.job = job
        self.model = Model(job.model, threads=threads, tokenizer=job.tokenizer)
        self.task = TASKS[job.task](self.model, job.settings, job.batch_size)
        self.input = open_input(job.input, job.text_field, job.keep)
        self.output = Output(job.output, job.output_format)

    def run(self, shard: Shard, done: Callable[[int], None] = lambda n: None) -> ShardResult:
        """Reads, computes and writes one shard; ``done(n)`` as records finish."""
        started = time.perf_counter()
        rows = self.task.run(self.input.read(shard), done)
        self.output.write(shard.number, rows)
        errors = sum(row["error"] is not None for row in rows)
        return ShardResult(shard.number, len(rows), errors, time.perf_counter() - started)


def run_job(job: Job, *, workers: int = 1, threads: Optional[int] = None,
            on_records: Optional[Callable[[int], None]] = None,
            on_shard: Optional[Callable[[ShardResult], None]] = None, plan: Optional[Plan] = None) -> JobSummary:
    """Runs ``job`` on this machine: ``workers`` processes (1: this one), each with a model of
    ``threads`` threads (default: this machine's cores shared out among the workers). Shards
    already written are skipped. ``on_records(n)`` is told as records finish, ``on_shard`` as
    each shard's file is in place (an exception from either stops the run: the shards written
    so far are kept)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, not {workers!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, not {threads!r}")
    plan = plan or plan_job(job)
    summary = skipped_summary(plan)
    started = time.perf_counter()
    on_records = on_records or (lambda n: None)
    workers = min(workers, len(plan.pending))
    threads = threads or max(1, available_cores() // max(workers, 1))

    def finished(result: ShardResult) -> None:
        summary.add(result)
        if on_shard is not None:
            on_shard(result)

    if workers == 1:
        worker = ShardWorker(job, threads)
        try:
            for shard in plan.pending:
                finished(worker.run(shard, on_records))
        finally:
            worker.model.close()
    elif workers > 1:
        _run_pool(job, plan.pending, workers, threads, on_records, finished)
    summary.seconds = time.perf_counter() - started
    return summary


# ---- the process pool ------------------------------------------------------------------------

_worker = None  # in a pool process: its ShardWorker, or the error that kept it from loading
_records_done = None


def _start_worker(job: Job, threads: int, counter) -> None:
    global _worker, _records_done
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _records_done = counter
    try:
        _worker = ShardWorker(job, threads)
    except Exception as e:  # raised with the first shard: a failing initializer would respawn forever
        _worker = e


def _run_shard(shard: Shard) -> ShardResult:
    if isinstance(_worker, Exception):
        raise _worker

    def done(n: int) -> None:
        with _records_done.get_lock():
            _records_done.value += n

    return _worker.run(shard, done)


def _run_pool(job, shards, workers, threads, on_records, finished) -> None:
    # spawn: the parent may hold threads (a model's pool) that a forked child would lack
    context = multiprocessing.get_context("spawn")
    counter = context.Value("q", 0)
    reported = 0

    def report() -> None:
        nonlocal reported
        now = counter.value
        if now > reported:
            on_records(now - reported)
            reported = now

    with context.Pool(workers, initializer=_start_worker, initargs=(job, threads, counter)) as pool:
        results = pool.imap_unordered(_run_shard, shards)
        while True:
            try:
                result = results.next(timeout=0.2)
            except multiprocessing.TimeoutError:
                report()
                continue
            except StopIteration:
                break
            report()
            finished(result)
