"""A corpus job on Ray Data: the shards left to do are a dataset, one row each, mapped by an actor
pool of :class:`RayShardWorker` (each loads the model once and does whole shards, as a local
worker does, writing each shard's file into place).

Workers read the input and write the output folder themselves, so on a cluster of several
machines both paths must be on storage every node mounts at the same path (as the model file);
on one machine, anything works. Needs ``pip install "rwkvcpp[ray]"``.
"""

from __future__ import annotations

import base64
import json
import pickle
import time
from collections.abc import Callable
from typing import Optional

import numpy as np

from .jobs import Job, JobSummary, Plan, ShardResult, ShardWorker, plan_job, skipped_summary
from .records import Shard

__all__ = ["RayShardWorker", "run_job_on_ray", "require_ray"]


def require_ray(what: str = "--ray"):
    try:
        import ray
    except ImportError:
        raise ImportError(f"{what} needs Ray: pip install \"rwkvcpp[ray]\" (or \"ray[serve,data]\")") from None
    return ray


class RayShardWorker:
    """The callable class of ``map_batches``: one model per actor; each batch is shard rows
    (``{"shard": [json, ...]}``), each done whole; returns one result row per shard. An error
    (a model that does not load, an input that changed) comes back as the shard's row, for the
    driver to raise as it was: Ray would wrap it in its own exception and traceback."""

    def __init__(self, job: Job, threads: int):
        try:
            self.worker = ShardWorker(job, threads)
        except Exception as e:
            self.worker = e

    def __call__(self, batch: dict) -> dict:
        rows = []
        for spec in batch["shard"]:
            try:
                if isinstance(self.worker, Exception):
                    raise self.worker
                rows.append(json.dumps(self.worker.run(Shard.from_json(str(spec)))._asdict()))
            except Exception as e:
                rows.append(json.dumps({"error": _pickled(e)}))
        return {"result": np.array(rows, dtype=object)}


def run_job_on_ray(job: Job, *, address: Optional[str] = None, workers: Optional[int] = None,
                   threads: Optional[int] = None, on_records: Optional[Callable[[int], None]] = None,
                   on_shard: Optional[Callable[[ShardResult], None]] = None,
                   plan: Optional[Plan] = None) -> JobSummary:
    """Runs ``job`` on a Ray cluster: ``workers`` actors (default: as many as the cluster's CPUs
    allow), each reserving ``threads`` CPUs (default 1) for a model of that many threads. Ray is
    started (``address``: as ``ray.init`` takes it) unless it already is, and shut down at the
    end if it was started here. Shards already written are skipped; ``on_records`` and
    ``on_shard`` are told as each shard's file is in place."""
    ray = require_ray()
    for name, value in (("workers", workers), ("threads", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer or None, not {value!r}")
    plan = plan or plan_job(job)
    summary = skipped_summary(plan)
    if not plan.pending:
        return summary
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    try:
        threads = threads or 1
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if workers is None:
            workers = max(1, cpus // threads)
        if workers * threads > cpus:
            raise ValueError(f"the Ray cluster has {cpus} CPU(s): {workers} worker(s) x {threads} thread(s) do not "
                             "fit; lower --workers or --threads")
        workers = min(workers, len(plan.pending))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the caller shows its own progress
        shards = ray.data.from_items([{"shard": s.to_json()} for s in plan.pending],
                                     override_num_blocks=len(plan.pending))
        results = shards.map_batches(RayShardWorker, fn_constructor_kwargs={"job": job, "threads": threads},
                                     batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=threads,
                                     batch_format="numpy")
        rows = iter(results.iter_rows())
        try:
            for row in rows:
                values = json.loads(row["result"])
                if "error" in values:
                    raise pickle.loads(base64.b64decode(values["error"]))
                result = ShardResult(**values)
                summary.add(result)
                if on_records is not None:
                    on_records(result.records)
                if on_shard is not None:
                    on_shard(result)
        finally:
            rows.close()  # stops the execution (and frees its workers) when the loop is left early
    finally:
        if started_here:
            ray.shutdown()
    summary.seconds = time.perf_counter() - started
    return summary


def _pickled(error: Exception) -> str:
    try:
        data = pickle.dumps(error)
    except Exception:  # an exception that does not pickle: its type and message
        data = pickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"))
    return base64.b64encode(data).decode("ascii")
