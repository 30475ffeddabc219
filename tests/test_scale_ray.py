"""Corpus jobs on Ray Data and the server on Ray Serve, on a Ray cluster started here (one node,
2 CPUs, shut down at the end): the same shards as a local run, a rerun after an interrupted
one, and two Serve replicas answering the official OpenAI client, streaming included.

Skipped cleanly without Ray (``pip install "rwkvcpp[ray]"``); the Serve test also needs the
server's packages and ``openai``. About a minute and a half on 2 cores, most of it starting Ray
and the replicas; marked ``ray`` (``-m 'not ray'`` leaves them out)."""

from __future__ import annotations

import json
import os
import socket

import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

import rwkvcpp  # noqa: E402
from rwkvcpp.data import builtin_model_path  # noqa: E402
from rwkvcpp.scale import Job, run_job  # noqa: E402
from rwkvcpp.scale.ray_data import run_job_on_ray  # noqa: E402

MODEL = os.fspath(builtin_model_path())
TEXTS = ["def f(x):\n    return x + 1", "The for statement", "", "class A:\n    pass", "import os", "x",
         "while True:\n    break", "A list is a sequence of items.", "try:\n    pass\nexcept ValueError:\n    raise"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 << 20)
    yield
    ray.shutdown()


@pytest.fixture
def corpus(tmp_path):
    with open(tmp_path / "in.jsonl", "w") as f:
        for i, text in enumerate(TEXTS):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    return tmp_path


def job(folder, task, name, **settings):
    return Job(task=task, input=os.fspath(folder / "in.jsonl"), output=os.fspath(folder / name), model=MODEL,
               keep=("id",), shard_size=2, batch_size=4, settings=settings)


def shard_bytes(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder)) if n.startswith("part-")}


@pytest.mark.parametrize("task, settings", [("embed", {}), ("perplexity", {"chunk": 4})])
def test_ray_data_writes_the_local_runs_shards(cluster, corpus, task, settings):
    run_job(job(corpus, task, "local", **settings), threads=1)
    records = []
    summary = run_job_on_ray(job(corpus, task, "ray", **settings), workers=2, threads=1, on_records=records.append)
    assert (sorted(summary.written), summary.skipped, sum(records)) == ([0, 1, 2, 3, 4], [], len(TEXTS))
    assert shard_bytes(corpus / "ray") == shard_bytes(corpus / "local")  # same bytes: same floats


class Interrupt(Exception):
    pass


def test_ray_data_rerun_after_an_interrupted_run_does_only_the_missing_shards(cluster, corpus):
    run_job(job(corpus, "embed", "local"), threads=1)

    def stop(result):
        raise Interrupt

    with pytest.raises(Interrupt):
        run_job_on_ray(job(corpus, "embed", "ray"), workers=1, threads=1, on_shard=stop)
    finished = sorted(n for n in os.listdir(corpus / "ray") if n.startswith("part-"))
    assert 1 <= len(finished) < 5
    before = {n: os.stat(corpus / "ray" / n).st_mtime_ns for n in finished}

    summary = run_job_on_ray(job(corpus, "embed", "ray"), workers=2, threads=1)
    assert sorted(summary.skipped) == [int(n[5:10]) for n in finished]
    assert sorted(summary.written + summary.skipped) == [0, 1, 2, 3, 4]
    assert {n: os.stat(corpus / "ray" / n).st_mtime_ns for n in finished} == before
    assert shard_bytes(corpus / "ray") == shard_bytes(corpus / "local")


def test_ray_data_refuses_more_workers_than_the_cluster_has_cpus(cluster, corpus):
    with pytest.raises(ValueError, match=r"the Ray cluster has 2 CPU\(s\): 2 worker\(s\) x 2 thread\(s\) do not fit"):
        run_job_on_ray(job(corpus, "embed", "ray"), workers=2, threads=2)


def test_ray_data_raises_a_workers_error_as_it_was(cluster, corpus):
    from rwkvcpp.scale.jobs import plan_job

    plan = plan_job(job(corpus, "embed", "ray"))
    first_line = (corpus / "in.jsonl").read_text().splitlines()[0]
    (corpus / "in.jsonl").write_text(first_line + "\n")  # the input shrinks after planning
    with pytest.raises(ValueError, match=r"in.jsonl has changed since the job was planned: shard 0 should hold 2 "
                                         r"records from line 1, found 1"):
        run_job_on_ray(job(corpus, "embed", "ray"), workers=1, threads=1, plan=plan)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_serve_replicas_answer_the_openai_client(cluster):
    pytest.importorskip("fastapi")
    openai = pytest.importorskip("openai")
    from ray import serve

    from rwkvcpp.scale.serve import REPLICA_HEADER, build_app

    with rwkvcpp.Model(MODEL, threads=1) as model:
        expected = model.create_completion("def ", max_tokens=12, temperature=0)["choices"][0]["text"]
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(MODEL, replicas=2, threads=1), name="rwkvcpp", route_prefix="/")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        replicas = set()
        for _ in range(40):  # each request goes to one of the two, at random
            raw = client.completions.with_raw_response.create(model="rwkv", prompt="def ", max_tokens=12, temperature=0)
            assert raw.parse().choices[0].text == expected
            replicas.add(raw.headers[REPLICA_HEADER])
            if len(replicas) == 2:
                break
        assert len(replicas) == 2

        messages = [{"role": "user", "content": "What is a list?"}]
        whole = client.chat.completions.create(model="rwkv", messages=messages, max_tokens=16, seed=3)
        chunks = list(client.chat.completions.create(model="rwkv", messages=messages, max_tokens=16, seed=3,
                                                     stream=True))
        assert len(chunks) > 3
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == whole.choices[0].message.content
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    finally:
        serve.shutdown()


def test_app_builder_arguments():
    from ray import serve

    from rwkvcpp.scale.serve import app_builder, builder_arguments

    args = {"model": MODEL, "replicas": "2", "max_replicas": "4", "max_concurrent": "3", "header_timeout": "2.5",
            "public_docs": "true", "allowed_hosts": "a.example,b.example"}
    model, options, config = builder_arguments(args)
    assert (model, options) == (MODEL, {"replicas": 2, "max_replicas": 4})
    assert (config.max_concurrent, config.header_timeout, config.public_docs, tuple(config.allowed_hosts)) == (
        3, 2.5, True, ("a.example", "b.example"))
    assert isinstance(app_builder(args), serve.Application)
    with pytest.raises(ValueError, match="max_concurrent must be a number, not 'x'"):
        builder_arguments({"model": MODEL, "max_concurrent": "x"})
    with pytest.raises(ValueError, match="the model argument is required"):
        builder_arguments({"replicas": "2"})
    with pytest.raises(ValueError, match="unknown argument 'replica'"):
        builder_arguments({"model": MODEL, "replica": "2"})
    with pytest.raises(ValueError, match=r"max_replicas \(1\) must be at least replicas \(2\)"):
        app_builder({"model": MODEL, "replicas": "2", "max_replicas": "1"})
