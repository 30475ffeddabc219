"""Continuous batching in the server (rwkvcpp.server.scheduler): many clients at once, over real
HTTP with the official ``openai`` client, against the same requests sent one at a time.

Each step of the server's engine thread is one pass over the weights for every running request,
and a request's prompt is read in pieces between the others' tokens; a sequence gets the same
logits in a batch as alone, and a prompt the same pieces whatever else is read, so every answer
must be the same, token for token, however many clients share the batch. The servers here run
a tiny random v7 model with a byte vocabulary (one character per token with ASCII_ONLY).
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")
pytest.importorskip("openai")

from support.checkpoints import make_checkpoint  # noqa: E402
from test_server import ASCII_ONLY, RunningServer, _error  # noqa: E402

from rwkvcpp import Model  # noqa: E402
from rwkvcpp.server import ServerConfig  # noqa: E402
from rwkvcpp.writer import write_model  # noqa: E402

LONG = 4000  # tokens: a request that runs until its client goes away


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("batching") / "tiny.bin"
    write_model(path, make_checkpoint("v7", n_layer=2, n_embed=128, n_vocab=256, seed=11), dtype="FP32")
    return Model(path, threads=2)


@pytest.fixture(scope="module")
def server(model):
    """Four sequences per step, prompts read 8 tokens per step: most prompts here take several
    steps, interleaved with the others' decoding."""
    s = RunningServer(model, ServerConfig(parallel=4, prompt_chunk=8, max_n=4, max_tokens_cap=LONG))
    yield s
    s.stop()


def _start(server, **config) -> RunningServer:
    return RunningServer(server, ServerConfig(max_tokens_cap=LONG, **config))


# ---- what one request gets ---------------------------------------------------------------------

# (kind, stream, arguments): greedy and seeded sampling, n > 1, stop strings, logprobs, chat, and
# with llguidance a structured output (an object held to a JSON schema)
REQUESTS = [
    ("text", False, dict(prompt="Once upon a time there was a", max_tokens=120, temperature=0)),
    ("text", True, dict(prompt="The lighthouse keeper wrote in his log that night:", max_tokens=100, temperature=0.9,
                        seed=5)),
    ("text", True, dict(prompt="Three seeded choices:", max_tokens=60, temperature=1.0, seed=21, n=3)),
    ("text", False, dict(prompt="A stop string, then logprobs", max_tokens=80, temperature=0.8, seed=2,
                         stop=["a", "e", "o", "t"], logprobs=2)),
    ("text", True, dict(prompt="Logprobs streamed", max_tokens=40, temperature=0, logprobs=1)),
    ("chat", True, dict(messages=[{"role": "user", "content": "Tell me a long story about a dog."}], max_tokens=90,
                        temperature=0.7, seed=9)),
    ("chat", False, dict(messages=[{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "What is a cat?"}], max_tokens=70, temperature=0)),
]


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
try:
    import llguidance  # noqa: F401

    REQUESTS.append(("chat", False, dict(messages=[{"role": "user", "content": "A number, as JSON."}], max_tokens=60,
                                         temperature=0.9, seed=4, response_format={
                                             "type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA}})))
except ImportError:
    pass


def _ask(client, kind: str, stream: bool, args: dict) -> list[tuple]:
    """The request's choices as (text, finish_reason, token logprobs), in index order."""
    args = {"model": "tiny", "logit_bias": ASCII_ONLY, **args}
    if kind == "chat":
        if stream:
            texts, reasons = defaultdict(str), {}
            for chunk in client.chat.completions.create(stream=True, **args):
                for c in chunk.choices:
                    texts[c.index] += c.delta.content or ""
                    reasons[c.index] = c.finish_reason or reasons.get(c.index)
            return [(texts[i], reasons[i], []) for i in sorted(texts)]
        reply = client.chat.completions.create(**args)
        return [(c.message.content, c.finish_reason, []) for c in reply.choices]
    if stream:
        texts, reasons, logprobs = defaultdict(str), {}, defaultdict(list)
        for chunk in client.completions.create(stream=True, **args):
            for c in chunk.choices:
                texts[c.index] += c.text
                reasons[c.index] = c.finish_reason or reasons.get(c.index)
                if c.logprobs is not None:
                    logprobs[c.index] += c.logprobs.token_logprobs
        return [(texts[i], reasons[i], logprobs[i]) for i in sorted(texts)]
    reply = client.completions.create(**args)
    return [(c.text, c.finish_reason, c.logprobs.token_logprobs if c.logprobs else []) for c in reply.choices]


def test_many_clients_get_what_each_gets_alone(server):
    client = server.client()
    steps = lambda: server.scheduler.stats()["steps"]  # noqa: E731
    before = steps()
    alone = [_ask(client, *request) for request in REQUESTS]
    steps_alone = steps() - before
    server.engine.cache.clear()  # read every prompt again, now in a shared batch

    start = threading.Barrier(len(REQUESTS))

    def together(request):
        start.wait()
        return _ask(server.client(), *request)

    before = steps()
    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        batched = list(pool.map(together, REQUESTS))
    steps_batched = steps() - before
    server.wait_idle()

    for (kind, _, args), got, want in zip(REQUESTS, batched, alone):
        assert got == want, f"{kind} {args}"
        assert len(got) == args.get("n", 1)
        for text, reason, logprobs in got:
            if "stop" not in args and kind == "text":  # complete: every token asked for
                assert reason == "length" and len(text) == args["max_tokens"], (args, text)
            if args.get("logprobs") is not None:
                assert len(logprobs) == len(text) if reason == "length" else len(logprobs) >= len(text)
    if "response_format" in REQUESTS[-1][2]:
        (text, reason, _), = alone[-1]
        assert reason == "stop" and set(json.loads(text)) == {"n"}, text
    texts = [text for text, _, _ in alone[2]]
    assert len(set(texts)) == 3, "each seeded choice draws its own text"
    assert alone[3][0][1] == "stop" and not set("aeot") & set(alone[3][0][0]), "a stop string should end that one"
    # seven requests in a batch of four: fewer passes than one request at a time
    assert steps_batched < 0.75 * steps_alone, (steps_batched, steps_alone)


# ---- places in the batch -----------------------------------------------------------------------


def _long_stream(client, prompt: str):
    """A streamed request that generates until closed, once its first text has come."""
    stream = client.completions.create(model="tiny", prompt=prompt, max_tokens=LONG, temperature=0,
                                       logit_bias=ASCII_ONLY, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            return stream
    raise AssertionError("the stream ended before any text")


def test_a_short_request_joins_while_long_ones_run(model):
    """With a sequence free, a max_tokens=1 request is answered while two long ones keep going:
    it does not wait for either to finish."""
    s = _start(model, parallel=3)
    try:
        client = s.client()
        long_ones = [_long_stream(client, f"Long request {i}:") for i in range(2)]
        short = client.completions.create(model="tiny", prompt="Short", max_tokens=1, temperature=0,
                                          logit_bias=ASCII_ONLY)
        assert short.choices[0].finish_reason == "length" and len(short.choices[0].text) == 1
        stats = s.scheduler.stats()
        assert stats["running"] == 2 and stats["sequences"] >= 2, stats  # the long ones are still at it
        for stream in long_ones:
            more = sum(len(c.choices[0].text) for _, c in zip(range(50), stream))
            assert more > 0, "the long request went on after the short one"
            stream.close()
        s.wait_idle()
    finally:
        s.stop()


def test_disconnect_frees_the_place_and_the_queue_bound_holds(model):
    """One sequence, one request waiting: a third gets 503; a client that goes away frees its
    place at once, and the waiting request runs."""
    s = _start(model, parallel=1, max_queue=1)
    try:
        assert s.scheduler.stats()["max_concurrent"] == 1
        client = s.client()
        running = _long_stream(client, "First:")
        waiting_result = {}

        def wait_for_a_place():
            waiting_result["reply"] = s.client().completions.create(
                model="tiny", prompt="Second:", max_tokens=20, temperature=0, logit_bias=ASCII_ONLY)

        waiter = threading.Thread(target=wait_for_a_place)
        waiter.start()
        deadline = 100
        while s.scheduler.stats()["waiting"] < 1 and deadline:
            deadline -= 1
            threading.Event().wait(0.05)
        assert s.scheduler.stats()["waiting"] == 1, s.scheduler.stats()
        with s.http() as http:
            err = _error(http.post("/v1/completions", json={"prompt": "Third", "max_tokens": 4}), 503)
            assert err["code"] == "server_busy"
        assert "reply" not in waiting_result, "the waiting request ran while the only place was taken"
        running.close()  # the first client goes away: the second request takes its place
        waiter.join(10)
        reply = waiting_result["reply"]
        assert reply.choices[0].finish_reason == "length" and len(reply.choices[0].text) == 20
        s.wait_idle(3.0)
    finally:
        s.stop()


def test_batch_size_settings(model):
    """--parallel's default follows the cores (4 to 32) and --max-concurrent follows --parallel;
    a batch whose states would not fit in memory is made smaller."""
    from types import SimpleNamespace

    from rwkvcpp.server.config import default_parallel
    from rwkvcpp.server.scheduler import fit_in_memory

    config = ServerConfig()
    assert config.parallel == default_parallel() and 4 <= config.parallel <= 32
    assert config.max_concurrent == config.parallel
    assert ServerConfig(parallel=2, max_concurrent=5).max_concurrent == 5
    with pytest.raises(ValueError, match="ServerConfig.parallel must be at least 1"):
        ServerConfig(parallel=0)
    with pytest.raises(ValueError, match="ServerConfig.prompt_chunk must be an integer"):
        ServerConfig(prompt_chunk=2.5)
    assert fit_in_memory(model, 8) == 8
    assert fit_in_memory(SimpleNamespace(state_len=1 << 50, n_vocab=256), 8) == 1
