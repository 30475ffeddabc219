"""Corpus jobs on Ray Data and the server on Ray Serve, on a Ray cluster started here (one node,
2 CPUs, shut down at the end): the same shards as a local run, a rerun after an interrupted
one; two Serve replicas sharing a states folder answer the official OpenAI client (streaming
too), continue each other's saved sessions with a local run's logits, send a request that names
a session to the replica holding it warm, and keep answering while a killed replica is replaced.

Skipped cleanly without Ray (``pip install "rwkvcpp[ray]"``); the Serve tests also need the
server's packages, httpx and ``openai``. About two minutes on 2 cores, most of it starting Ray,
the replicas and a replacement; marked ``ray`` (``-m 'not ray'`` leaves them out)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass

import numpy as np
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


@dataclass
class Served:
    url: str
    states: str


@pytest.fixture(scope="module")
def served(cluster, tmp_path_factory):
    """Two replicas (one thread each: the cluster's 2 CPUs) sharing a states folder."""
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from ray import serve

    from rwkvcpp.scale.serve import build_app
    from rwkvcpp.server import ServerConfig

    states = os.fspath(tmp_path_factory.mktemp("states"))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        # body_timeout: a request Serve retries on another replica after the first died can find
        # its body already read, and waits for it that long (seen once in a few runs) before a 408.
        config = ServerConfig(states_dir=states, max_concurrent=4, body_timeout=5)
        serve.run(build_app(MODEL, replicas=2, threads=1, config=config), name="rwkvcpp", route_prefix="/")
        yield Served(f"http://127.0.0.1:{port}", states)
    finally:
        serve.shutdown()


def test_two_serve_replicas_answer_the_openai_client(served):
    openai = pytest.importorskip("openai")
    from rwkvcpp.scale.serve import REPLICA_HEADER

    with rwkvcpp.Model(MODEL, threads=1) as model:
        expected = model.create_completion("def ", max_tokens=12, temperature=0)["choices"][0]["text"]
    client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
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


SESSION_TEXT = "class Stack:\n    def __init__(self):\n        self.items = []\n"
NEXT_TEXT = "\n    def push(self, item):"
# Plain greedy decoding: no repetition penalties, whose defaults would make it more than an argmax.
GREEDY = {"max_tokens": 8, "temperature": 0, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": 1}


def local_greedy(start_text: str, next_text: str, steps: int) -> tuple[list[int], list[float], str]:
    """The tokens greedy decoding picks after the two texts (read one after the other, as a
    saved session and its continuation are), and each one's log probability."""
    with rwkvcpp.Model(MODEL, threads=1) as model:
        state = model.ingest(model.tokenizer.encode(start_text))
        logits, state = model.eval_sequence(model.tokenizer.encode(next_text), state)
        tokens, logprobs = [], []
        for _ in range(steps):
            log_softmax = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
            token = int(np.argmax(logits))
            tokens.append(token)
            logprobs.append(float(log_softmax[token]))
            if token == 0:  # the end of text
                break
            logits, state = model.eval(token, state)
        return tokens, logprobs, model.tokenizer.decode([t for t in tokens if t != 0])


def save_session(client, text: str):
    from rwkvcpp.scale.serve import REPLICA_HEADER

    saved = client.post("/v1/states", json={"prompt": text})
    assert saved.status_code == 200, saved.text
    return saved.json()["id"], saved.headers[REPLICA_HEADER]


def test_a_session_saved_on_one_replica_continues_on_the_other(served):
    import httpx

    from rwkvcpp.scale.serve import REPLICA_HEADER

    tokens, logprobs, text = local_greedy(SESSION_TEXT, NEXT_TEXT, GREEDY["max_tokens"])
    with httpx.Client(base_url=served.url, timeout=60) as client:
        state_id, saver = save_session(client, SESSION_TEXT)
        for _ in range(40):  # without the session header a request goes to either replica
            answer = client.post("/v1/completions", json={"prompt": NEXT_TEXT, "rwkv_state": state_id, **GREEDY})
            assert answer.status_code == 200, answer.text
            if answer.headers[REPLICA_HEADER] != saver:
                break
        assert answer.headers[REPLICA_HEADER] != saver
    choice = answer.json()["choices"][0]
    assert choice["text"] == text
    assert choice["logprobs"]["token_logprobs"] == pytest.approx(logprobs, abs=1e-4)
    assert len(tokens) > 3


def test_requests_naming_a_session_go_to_a_replica_holding_it_warm(served):
    import httpx

    from rwkvcpp.scale.serve import REPLICA_HEADER, SESSION_HEADER

    with httpx.Client(base_url=served.url, timeout=60) as client:
        state_id, saver = save_session(client, SESSION_TEXT)
        time.sleep(1)  # the replica tells Serve what it holds every 0.1 s; Serve's routers hear it next
        replicas = []
        for _ in range(12):  # at random, these would all reach one replica once in 2048 runs
            answer = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1, "rwkv_state": state_id},
                                 headers={SESSION_HEADER: state_id})
            assert answer.status_code == 200, answer.text
            replicas.append(answer.headers[REPLICA_HEADER])
        assert set(replicas) == {saver}

        # Deleted (through whichever replica), the state is gone from the replica holding it warm too.
        assert client.delete(f"/v1/states/{state_id}").status_code == 200
        gone = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1, "rwkv_state": state_id},
                           headers={SESSION_HEADER: state_id})
        assert gone.headers[REPLICA_HEADER] == saver
        assert (gone.status_code, gone.json()["error"]["code"]) == (404, "state_not_found")


@dataclass
class Answer:
    sent: float
    done: float
    ok: bool
    replica: str | None


def test_a_killed_replica_is_replaced_and_requests_keep_being_answered(served):
    import httpx

    from rwkvcpp.scale.serve import REPLICA_HEADER

    answers: list[Answer] = []
    stop = threading.Event()

    def keep_asking():
        with httpx.Client(base_url=served.url, timeout=60) as client:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = client.post("/v1/completions", json={"prompt": "def ", "max_tokens": 16, "temperature": 0})
                    ok, replica = r.status_code == 200, r.headers.get(REPLICA_HEADER)
                except httpx.HTTPError:
                    ok, replica = False, None
                answers.append(Answer(sent, time.monotonic(), ok, replica))

    def wait_for(condition, seconds):
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert condition()

    clients = [threading.Thread(target=keep_asking) for _ in range(3)]
    for c in clients:
        c.start()
    try:
        wait_for(lambda: len({a.replica for a in answers if a.ok}) == 2, 30)
        first_two = {a.replica for a in answers if a.ok}
        victim = sorted(first_two)[0]
        ray.kill(ray.get_actor(f"SERVE_REPLICA::rwkvcpp#rwkvcpp#{victim}", namespace="serve"), no_restart=True)
        killed_at = time.monotonic()
        wait_for(lambda: any(a.ok and a.replica not in first_two for a in answers), 90)  # the replacement
        replaced_at = time.monotonic()
        wait_for(lambda: sum(a.sent > replaced_at for a in answers) >= 6, 30)
    finally:
        stop.set()
        for c in clients:
            c.join()
    failed = [a for a in answers if not a.ok]
    assert all(a.sent < killed_at < a.done for a in failed), failed  # only requests in flight at the kill
    assert len(failed) <= len(clients)
    after = [a for a in answers if a.sent > killed_at]
    assert all(a.ok for a in after) and len(after) >= 6
    assert victim not in {a.replica for a in after}


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
