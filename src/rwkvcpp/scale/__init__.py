"""Past one machine: corpus jobs over many workers, and server replicas on a Ray cluster.

* :mod:`.records`: a job's input (JSONL, Parquet, a folder of ``.txt`` files) cut into shards of
  records, and its output written shard by shard, each file renamed into place when whole, so a
  rerun finds the finished shards and does only the others;
* :mod:`.tasks`: what a worker does to a shard's records with its one model (embeddings,
  perplexity, generation), batched: several records per pass over the weights;
* :mod:`.jobs`: a job's settings, its plan (which shards are left), and running it on this
  machine (the worker in-process, or a process pool);
* :mod:`.ray_data`: the same job on Ray Data (``pip install "rwkvcpp[ray]"``);
* :mod:`.serve`: the OpenAI-compatible server as replicas on Ray Serve.

``rwkvcpp batch`` and ``rwkvcpp serve --ray`` are the command lines over these; docs/SCALING.md
says how to run them on one machine, a Ray cluster and Kubernetes.
"""

from .jobs import Job, JobSummary, run_job

__all__ = ["Job", "JobSummary", "run_job"]
