"""The OpenAI-compatible server (rwkvcpp.server), over real HTTP on the loopback interface.

Servers run in-process (uvicorn in a background thread, on a port the OS picks) with a tiny
random v7 model, and are driven with the official ``openai`` client and with httpx. Tests whose
output must be controlled (tool calls, a full queue, a client that goes away) swap in a scripted
generator on a second server whose state cache is off (so the generator sees whole prompts).
The chat page is loaded in headless Chromium, driven through the DevTools protocol over a pipe.

Skipped cleanly when FastAPI, uvicorn, httpx or openai is missing (the page test also without
Chromium).
"""

from __future__ import annotations

import json
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from support.checkpoints import make_checkpoint  # noqa: E402

from rwkvcpp import Model  # noqa: E402
from rwkvcpp.generate import Chunk  # noqa: E402
from rwkvcpp.server import ServerConfig, create_app  # noqa: E402
from rwkvcpp.chat_format import parse_tool_calls, render_chat  # noqa: E402
from rwkvcpp.server.state_cache import StateCache  # noqa: E402
from rwkvcpp.writer import write_model  # noqa: E402

API_KEY = "test-key-123"
# Printable ASCII only (other bytes banned with OpenAI's -100): the text then goes back to the
# same tokens, and no newline can form a stop string.
ASCII_ONLY = {str(b): -100 for b in range(256) if not 32 <= b < 127}


# ---- servers -------------------------------------------------------------------------------------


class RunningServer:
    def __init__(self, model, config: ServerConfig):
        self.app = create_app(model, config)
        self.engine = self.app.state.engine
        self.scheduler = self.app.state.scheduler
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=2))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        self._sock = sock

    def client(self, **kw) -> openai.OpenAI:
        kw.setdefault("api_key", "unused")
        return openai.OpenAI(base_url=self.url + "/v1", max_retries=0, timeout=30, **kw)

    def http(self, **kw) -> httpx.Client:
        kw.setdefault("timeout", 30)
        return httpx.Client(base_url=self.url, **kw)

    def stats(self) -> dict:
        return self.engine.stats()

    def wait_idle(self, seconds: float = 5.0) -> float:
        """Seconds until no request is admitted or running (fails after ``seconds``)."""
        start = time.monotonic()
        while True:
            s = self.scheduler.stats()
            if s["admitted"] == 0 and s["running"] == 0:
                return time.monotonic() - start
            if time.monotonic() - start > seconds:
                raise AssertionError(f"the server is still busy after {seconds} s: {s}")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("server") / "tiny.bin"
    write_model(path, make_checkpoint("v7", n_layer=2, n_embed=128, n_vocab=256, seed=7), dtype="FP32")
    return path


@pytest.fixture(scope="module")
def model(model_path):
    return Model(model_path, threads=2)


@pytest.fixture(scope="module")
def server(model):
    """The default configuration (with smaller caps so limit checks are quick to reach)."""
    s = RunningServer(model, ServerConfig(max_tokens_cap=256, default_max_tokens=32, max_n=4))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ctl(model):
    """One worker, one waiting slot, an API key, no state cache: for scripted generators."""
    s = RunningServer(model, ServerConfig(api_key=API_KEY, max_concurrent=1, max_queue=1, cache_entries=0,
                                          default_max_tokens=16))
    yield s
    s.stop()


class ScriptedGenerator:
    """Stands in for rwkvcpp.generate.Generator: replies with the given texts in turn (the
    last one from then on), a few characters per chunk, ``delay`` seconds apart; records the
    prompts it is given and how many streams were closed before their end."""

    def __init__(self, tokenizer, replies, delay: float = 0.0):
        self.tokenizer = tokenizer
        self.replies = list(replies)
        self.delay = delay
        self.prompts: list[str] = []
        self.closed = 0

    def stream(self, prompt, params=None, state=None, *, logits=None):
        assert state is None, "the ctl server has no cache: whole prompts come in"
        self.prompts.append(self.tokenizer.decode(prompt))
        text = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        return self._run(text)

    def _run(self, text):
        pieces = [text[i:i + 3] for i in range(0, len(text), 3)] or [""]
        try:
            for k, piece in enumerate(pieces):
                if self.delay:
                    time.sleep(self.delay)
                if k < len(pieces) - 1:
                    yield Chunk(piece, 65, None, None)
                else:
                    result = SimpleNamespace(completion_tokens=len(pieces), tokens=[], state=None)
                    yield Chunk(piece, 65, "stop", result)
        except GeneratorExit:
            self.closed += 1
            raise


@pytest.fixture
def scripted(ctl):
    """Installs a ScriptedGenerator on the ctl server: ``scripted(replies, delay)``."""
    original = ctl.engine.generator

    def install(replies, delay=0.0):
        fake = ScriptedGenerator(ctl.engine.tokenizer, replies, delay)
        ctl.engine.generator = fake
        return fake

    yield install
    ctl.engine.generator = original
    ctl.wait_idle()


def _sse_data(lines) -> list:
    """The parsed ``data:`` payloads of an SSE stream's lines (``[DONE]`` kept as a string)."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


# ---- the basics ---------------------------------------------------------------------------------


def test_models_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["tiny"]
    with server.http() as http:
        health = http.get("/health").json()
        assert health["status"] == "ok" and health["model"] == "tiny"
        assert http.get("/v1/models/tiny").json()["id"] == "tiny"
        assert http.get("/v1/models/other").status_code == 404
        docs = http.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        spec = http.get("/openapi.json").json()
        assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"} <= set(spec["paths"])


def test_chat_completion(server):
    client = server.client()
    reply = client.chat.completions.create(
        model="anything", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=12, temperature=0,
    )
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == "tiny" and reply.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    again = client.chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=12, temperature=0,
    )
    assert again.choices[0].message.content == choice.message.content


def test_completion_and_stop(server):
    client = server.client()
    full = client.completions.create(model="x", prompt="The cat", max_tokens=24, temperature=0,
                                     logit_bias=ASCII_ONLY)
    text = full.choices[0].text
    assert full.choices[0].finish_reason == "length" and len(text) == 24
    assert full.usage.prompt_tokens == len("The cat") and full.usage.completion_tokens == 24
    stop = text[10:13]
    cut = client.completions.create(model="x", prompt="The cat", max_tokens=24, temperature=0,
                                    logit_bias=ASCII_ONLY, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]
    echoed = client.completions.create(model="x", prompt="The cat", max_tokens=24, temperature=0,
                                       logit_bias=ASCII_ONLY, echo=True)
    assert echoed.choices[0].text == "The cat" + text
    # token ids work as a prompt too, and several prompts give several choices
    batch = client.completions.create(model="x", prompt=[list(b"The cat"), list(b"A dog")], max_tokens=24,
                                      temperature=0, logit_bias=ASCII_ONLY)
    assert [c.index for c in batch.choices] == [0, 1] and batch.choices[0].text == text
    texts = client.completions.create(model="x", prompt=["A dog", "The cat"], max_tokens=24, temperature=0,
                                      logit_bias=ASCII_ONLY)
    assert [c.text for c in texts.choices] == [batch.choices[1].text, text]


def test_sampling_knobs_n_and_seed(server):
    client = server.client()
    kwargs = dict(model="x", prompt="Once", max_tokens=16, temperature=1.0, top_p=0.9, seed=1234, n=3,
                  presence_penalty=0.5, frequency_penalty=0.5,
                  extra_body={"top_k": 20, "min_p": 0.01, "penalty_decay": 0.99, "global_penalty": True})
    a = client.completions.create(**kwargs)
    b = client.completions.create(**kwargs)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # same seed, same texts
    assert len({c.text for c in a.choices}) > 1  # choice i draws with seed + i
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], n=2, max_tokens=8,
                                          temperature=0)
    assert len(chat.choices) == 2 and chat.choices[0].message.content == chat.choices[1].message.content


def test_streaming_joins_to_the_same_text(server):
    client = server.client()
    messages = [{"role": "user", "content": "Tell me a story"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=40, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=40, temperature=0,
                                                 stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for p in pieces if p) > 3  # it really came in pieces
    assert "".join(pieces) == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    text = client.completions.create(model="tiny", prompt="Hello", max_tokens=30, temperature=0).choices[0].text
    streamed = client.completions.create(model="tiny", prompt="Hello", max_tokens=30, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text

    # the raw stream: SSE data lines ending with [DONE]
    with server.http() as http:
        with http.stream("POST", "/v1/completions", json={"prompt": "Hi", "max_tokens": 5, "stream": True}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = _sse_data(r.iter_lines())
    assert events[-1] == "[DONE]" and all(isinstance(e, dict) for e in events[:-1])


def test_embeddings(server, model):
    client = server.client()
    result = client.embeddings.create(model="x", input=["hello world", "something else", "hello world"])
    vectors = [np.array(d.embedding) for d in result.data]
    assert [d.index for d in result.data] == [0, 1, 2]
    assert all(v.shape == (model.n_embed,) for v in vectors)
    for v in vectors:
        assert math.isclose(float(np.linalg.norm(v)), 1.0, rel_tol=1e-5)
    assert np.allclose(vectors[0], vectors[2]) and not np.allclose(vectors[0], vectors[1])
    as_float = client.embeddings.create(model="tiny", input="hello world", encoding_format="float")
    assert np.allclose(as_float.data[0].embedding, vectors[0], atol=1e-6)
    expected, _ = model.eval_embedding(list(b"hello world"))
    assert np.allclose(vectors[0], expected, atol=1e-6)
    assert result.usage.prompt_tokens == 11 + 14 + 11


# ---- errors ------------------------------------------------------------------------------------


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    assert body["error"]["message"]
    return body["error"]


def test_errors_are_openai_shaped(server):
    good = {"messages": [{"role": "user", "content": "hi"}]}
    with server.http() as http:
        err = _error(http.post("/v1/chat/completions", content=b'{"messages": [',
                               headers={"content-type": "application/json"}), 400)
        assert "JSON" in err["message"] and err["type"] == "invalid_request_error"
        err = _error(http.post("/v1/chat/completions", json={**good, "temperature": "hot"}), 400)
        assert err["param"] == "temperature"
        assert _error(http.post("/v1/chat/completions", json={**good, "n": 1.5}), 400)["param"] == "n"
        assert _error(http.post("/v1/chat/completions", json={**good, "stream": "yes"}), 400)["param"] == "stream"
        assert _error(http.post("/v1/chat/completions", json={"messages": "hi"}), 400)["param"] == "messages"
        err = _error(http.post("/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]}), 400)
        assert err["param"] == "messages[0].role"
        assert _error(http.post("/v1/chat/completions", json={"messages": []}), 400)["param"] == "messages"
        # out of range
        def param_of(**fields):
            return _error(http.post("/v1/chat/completions", json={**good, **fields}), 400)["param"]

        assert param_of(temperature=2.5) == "temperature"
        assert param_of(top_p=-0.1) == "top_p"
        assert param_of(max_tokens=100_000) == "max_tokens"  # over the server's cap
        assert param_of(n=99) == "n"
        assert param_of(logit_bias={"999": 1}) == "logit_bias"  # not a token of this model
        assert param_of(top_k=-1) == "top_k"
        assert _error(http.post("/v1/completions", json={"prompt": [300]}), 400)["param"] == "prompt"
        assert _error(http.post("/v1/completions", json={"prompt": ""}), 400)["param"] == "prompt"
        err = _error(http.post("/v1/completions", json={"prompt": "x" * 20_000}), 400)
        assert err["code"] == "context_length_exceeded"
        assert _error(http.post("/v1/embeddings", json={"input": ["ok", ""]}), 400)["param"] == "input[1]"
        assert _error(http.post("/v1/embeddings", json={"input": "ok", "dimensions": 3}), 400)["param"] == "dimensions"
        # size limit, unknown paths and methods
        big = b'{"prompt": "' + b"x" * (2 << 20) + b'"}'
        assert _error(http.post("/v1/completions", content=big, headers={"content-type": "application/json"}),
                      413)["code"] == "request_too_large"
        _error(http.get("/v1/nothing"), 404)
        _error(http.get("/v1/chat/completions"), 405)
    # the openai client sees them as its own error types
    with pytest.raises(openai.BadRequestError):
        server.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                                temperature=5)


def test_api_key(ctl, scripted):
    scripted(["fine"])
    with ctl.http() as http:
        assert _error(http.get("/v1/models"), 401)["code"] == "invalid_api_key"
        assert http.get("/health").status_code == 200  # not behind the key, nor is the page
        assert http.get("/").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        ctl.client(api_key="wrong").models.list()
    with pytest.raises(openai.AuthenticationError):
        ctl.client(api_key="wrong").chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    reply = ctl.client(api_key=API_KEY).chat.completions.create(model="tiny",
                                                                messages=[{"role": "user", "content": "x"}])
    assert reply.choices[0].message.content == "fine"


# ---- tool calls --------------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_tool_call_round_trip(ctl, scripted):
    fake = scripted([
        ' <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
        " It is 21 degrees in Paris.",
    ])
    client = ctl.client(api_key=API_KEY)
    messages = [{"role": "system", "content": "You help."}, {"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    prompt = fake.prompts[0]
    assert '"name": "get_weather"' in prompt and "<tool_call>" in prompt  # the tools are offered
    assert prompt.endswith("User: Weather in Paris?\n\nAssistant:")

    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
    second = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == "It is 21 degrees in Paris."
    assert second.choices[0].finish_reason == "stop" and not second.choices[0].message.tool_calls
    prompt = fake.prompts[1]
    assert ('Assistant: <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n\n'
            f'Tool: <tool_result name="get_weather" id="{call.id}">{{"temp_c": 21}}</tool_result>\n\n'
            "Assistant:") in prompt


def test_tool_call_streamed_forced_and_invalid(ctl, scripted):
    client = ctl.client(api_key=API_KEY)
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    scripted([' Checking.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'])
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER], stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert content.strip() == "Checking." and "<tool" not in content  # the call itself is held back
    assert len(calls) == 1 and calls[0].id.startswith("call_") and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Oslo"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # a named tool_choice starts the call for the model; it writes only the arguments
    fake = scripted(['{"city": "Rome"}}</tool_call>'])
    forced = client.chat.completions.create(
        model="tiny", messages=messages, tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert fake.prompts[0].endswith('Assistant: <tool_call>{"name": "get_weather", "arguments": ')
    assert json.loads(forced.choices[0].message.tool_calls[0].function.arguments) == {"city": "Rome"}

    # not valid JSON (or an unknown tool): plain content, streamed or not
    bad = ' <tool_call>{"name": "get_weather", "arguments": {city: Oslo}}</tool_call>'
    scripted([bad])
    reply = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER])
    assert reply.choices[0].message.content == bad.strip() and not reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "stop"
    scripted([bad])
    streamed = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == bad.strip()
    scripted([' <tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'])
    reply = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER])
    assert reply.choices[0].message.content.startswith("<tool_call>")
    # without tools on offer, the same text is never parsed
    scripted([' <tool_call>{"name": "get_weather", "arguments": {}}</tool_call>'])
    reply = client.chat.completions.create(model="tiny", messages=messages)
    assert reply.choices[0].message.content.startswith("<tool_call>")


def test_python_api_gives_the_servers_answers(ctl, model):
    """Model.create_chat_completion and create_completion run the server's code (rwkvcpp.completion):
    the same request and seed give the same choices. ctl has no state cache, so both read whole
    prompts. OpenAI's -100 bias is a ban; in Python a ban is -inf."""
    client = ctl.client(api_key=API_KEY)
    banned = {int(token): -math.inf for token in ASCII_ONLY}
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about cats."}]
    http = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, seed=3, n=2,
                                          logit_bias=ASCII_ONLY)
    local = model.create_chat_completion(messages, max_tokens=20, seed=3, n=2, logit_bias=banned)
    assert [c.model_dump(exclude_none=True) for c in http.choices] == \
        [{k: v for k, v in c.items() if v is not None} for c in local["choices"]]
    assert (http.usage.prompt_tokens, http.usage.completion_tokens) == \
        (local["usage"]["prompt_tokens"], local["usage"]["completion_tokens"])

    http = client.completions.create(model="tiny", prompt=["Once", "The dog"], max_tokens=12, seed=8,
                                     logit_bias=ASCII_ONLY, echo=True)
    local = model.create_completion(["Once", "The dog"], max_tokens=12, seed=8, logit_bias=banned, echo=True)
    assert [(c.index, c.text, c.finish_reason) for c in http.choices] == \
        [(c["index"], c["text"], c["finish_reason"]) for c in local["choices"]]

    vectors = client.embeddings.create(model="tiny", input=["one", "two"]).data
    assert [v.embedding for v in vectors] == [d["embedding"] for d in model.create_embedding(["one", "two"])["data"]]


def test_chat_format_units():
    prompt = render_chat([{"role": "user", "content": "a\n\n\nb"}])
    assert prompt.text == "User: a\nb\n\nAssistant:" and "\n\nUser:" in prompt.stop
    parsed = parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call>'
                              '<tool_call>{"name": "f", "arguments": {"x": 2}}', ["f"])
    assert [json.loads(c["function"]["arguments"]) for c in parsed[1]] == [{"x": 1}, {"x": 2}]
    assert parse_tool_calls('<tool_call>{"name": "f"} trailing', ["f"]) is None
    assert parse_tool_calls("no call", ["f"]) is None


# ---- concurrency -------------------------------------------------------------------------------


def test_concurrent_streams(server):
    client = server.client()
    prompts = [f"Story number {i}:" for i in range(5)]
    expected = [client.completions.create(model="tiny", prompt=p, max_tokens=48, temperature=0).choices[0].text
                for p in prompts]

    def streamed(p):
        return "".join(c.choices[0].text for c in
                       client.completions.create(model="tiny", prompt=p, max_tokens=48, temperature=0, stream=True))

    with ThreadPoolExecutor(len(prompts)) as pool:
        got = list(pool.map(streamed, prompts))
    assert got == expected
    server.wait_idle()


def test_full_queue_gives_503(ctl, scripted):
    fake = scripted(["word " * 400], delay=0.01)
    body = {"messages": [{"role": "user", "content": "go"}], "stream": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with ctl.http(headers=headers) as a, ctl.http(headers=headers) as b, ctl.http(headers=headers) as c:
        with a.stream("POST", "/v1/chat/completions", json=body) as running:
            assert running.status_code == 200
            lines = running.iter_lines()
            while ctl.scheduler.stats()["running"] < 1:  # it has reached the worker
                next(lines)
            with b.stream("POST", "/v1/chat/completions", json=body) as waiting:
                assert waiting.status_code == 200  # admitted, waiting for the one worker
                err = _error(c.post("/v1/chat/completions", json=body), 503)
                assert err["type"] == "server_error" and err["code"] == "server_busy"
                assert _error(c.post("/v1/embeddings", json={"input": "x"}), 503)
    # both clients gone: the slots free up at once, and the generator was stopped
    assert ctl.wait_idle(3.0) < 2.0
    assert fake.closed >= 1
    scripted(["ok"])
    with ctl.http(headers=headers) as http:
        assert http.post("/v1/chat/completions", json={**body, "stream": False}).status_code == 200


def test_disconnect_frees_the_slot(ctl, scripted):
    fake = scripted(["more text " * 300], delay=0.01)  # about 10 s if not stopped
    client = ctl.client(api_key=API_KEY)
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "go"}], stream=True)
    got = [next(stream) for _ in range(4)]
    assert got[-1].choices[0].delta.content
    stream.close()  # the client goes away mid-stream
    assert ctl.wait_idle(3.0) < 1.5
    assert fake.closed == 1
    scripted(["served"])
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "next"}])
    assert reply.choices[0].message.content == "served"


def test_disconnect_non_streaming(ctl, scripted):
    fake = scripted(["x" * 3000], delay=0.01)
    with ctl.http(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=0.5) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "go"}]})
    assert ctl.wait_idle(3.0) < 2.0
    assert fake.closed == 1


# ---- the state cache ---------------------------------------------------------------------------


def test_second_turn_reuses_the_cached_prefix(server):
    client = server.client()
    evaluated = lambda: server.stats()["prompt_tokens_evaluated"]  # noqa: E731
    messages = [{"role": "user", "content": "My name is Ann, I like cats and long walks."}]
    before = evaluated()
    first = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0,
                                           logit_bias=ASCII_ONLY)
    assert evaluated() - before == first.usage.prompt_tokens  # a new conversation: all of it
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "What is my name?"}]
    before = evaluated()
    second = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0,
                                            logit_bias=ASCII_ONLY)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens - 1  # at least the first turn's prompt
    assert evaluated() - before == second.usage.prompt_tokens - cached  # only the new part ran

    # in plain completions the reply's own tokens are reused too
    prompt = "The quick brown fox"
    one = client.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0, logit_bias=ASCII_ONLY)
    before = evaluated()
    two = client.completions.create(model="tiny", prompt=prompt + one.choices[0].text + " and then", max_tokens=4,
                                    temperature=0, logit_bias=ASCII_ONLY)
    assert two.usage.prompt_tokens_details.cached_tokens == len(prompt) + 16
    assert evaluated() - before == len(" and then")
    # and the result is the same as without the cache
    server.engine.cache.clear()
    three = client.completions.create(model="tiny", prompt=prompt + one.choices[0].text + " and then", max_tokens=4,
                                      temperature=0, logit_bias=ASCII_ONLY)
    assert three.usage.prompt_tokens_details.cached_tokens == 0
    assert three.choices[0].text == two.choices[0].text


def test_state_cache_bounds():
    cache = StateCache(max_entries=2, max_bytes=10_000)
    s = np.zeros(100, dtype=np.float32)  # 400 bytes
    cache.put([1, 2, 3], s)
    cache.put([1, 2], s + 1)
    assert cache.lookup([1, 2, 3, 4])[0] == 3 and cache.lookup([1, 2, 3])[0] == 2  # proper prefixes only
    cache.put([5], s)  # evicts the least recently used: [1, 2, 3]
    assert len(cache) == 2 and cache.lookup([1, 2, 3, 4])[0] == 2
    assert not cache.put([7], np.zeros(5000, dtype=np.float32))  # alone over the byte bound
    assert cache.bytes <= 10_000
    n, state = cache.lookup([5, 6])
    assert n == 1 and not state.flags.writeable


# ---- the command line --------------------------------------------------------------------------


def start_serve(model_path, *args):
    """``rwkvcpp serve MODEL ARGS`` on a free port, once /health answers 200: (process, url)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rwkvcpp", "serve", str(model_path), "--port", str(port), "--log-level", "warning",
         *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"rwkvcpp serve did not start: {proc.communicate()[0]}")
        time.sleep(0.1)


def stop_serve(proc, signal_number=None) -> str:
    """Its output, after ``signal_number`` (default SIGTERM) and its exit."""
    proc.send_signal(signal_number or signal.SIGTERM)
    try:
        return proc.communicate(timeout=10)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
        raise AssertionError(f"rwkvcpp serve did not stop within 10 s of the signal: {out}")


def test_serve_command(model_path):
    proc, url = start_serve(model_path, "--api-key", "k", "--max-tokens", "64", "--access-log", "json")
    try:
        assert httpx.get(url + "/v1/models", headers={"User-Agent": "probe/1"}).status_code == 401
        r = httpx.post(url + "/v1/completions", headers={"Authorization": "Bearer k"},
                       json={"prompt": "hi", "max_tokens": 65})
        assert r.status_code == 400 and "64" in r.json()["error"]["message"]
    finally:
        out = stop_serve(proc)
    assert url.split("//")[1] in out
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    refused = [r for r in records if r["path"] == "/v1/models"]
    assert len(refused) == 1 and refused[0]["status"] == 401 and refused[0]["user_agent"] == "probe/1", records
    assert {"time", "client", "method", "duration_ms", "bytes"} <= set(refused[0])
    assert [r["status"] for r in records if r["path"] == "/v1/completions"] == [400]
    assert "GET /v1/models" not in out  # uvicorn's text lines are off


def test_sigterm_during_a_stream_ends_it_cleanly(model_path):
    """SIGTERM while a long answer streams: the stream ends at once, well formed (an error event
    saying the server is stopping, then [DONE]), and the process ends well before uvicorn's
    graceful-shutdown timeout would cut the connection."""
    proc, url = start_serve(model_path, "--max-tokens", "1000000")
    lines = []
    try:
        body = {"prompt": "hi", "max_tokens": 1000000, "stream": True, "logit_bias": {"0": -100}}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line:
                    lines.append(line)
                if len(lines) == 5:
                    stopped_at = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
        ended_after = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            stop_serve(proc)
    # uvicorn re-raises the signal once it has shut down, so the exit status says "terminated"
    assert proc.wait(10) == -signal.SIGTERM
    assert lines[-1] == "data: [DONE]" and ended_after < 2.5, (lines[-3:], ended_after)
    error = json.loads(lines[-2][len("data: "):])
    assert error["error"]["code"] == "shutting_down", error


# ---- the web page ------------------------------------------------------------------------------


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _high_fd(fd: int) -> int:
    """``fd`` moved to a number above 9, so that putting the pipes on fds 3 and 4 cannot clobber it."""
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class DevTools:
    """A minimal Chrome DevTools protocol client over --remote-debugging-pipe (fds 3 and 4):
    NUL-terminated JSON messages, no extra packages."""

    def __init__(self, chromium: str, user_data_dir: str):
        to_chrome_r, self._w = map(_high_fd, os.pipe())
        self._r, from_chrome_w = map(_high_fd, os.pipe())
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-extensions", "--remote-debugging-pipe", f"--user-data-dir={user_data_dir}", "about:blank"]
        # A small Python trampoline puts the pipe ends on fds 3 and 4, where chromium expects
        # them (no preexec_fn: this process has threads).
        trampoline = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); " \
                     "os.execv(sys.argv[3], sys.argv[3:])"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", trampoline, str(to_chrome_r), str(from_chrome_w), chromium, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(to_chrome_r, from_chrome_w),
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 15):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer to {method}")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                data = os.read(self._r, 1 << 16)
                if not data:
                    raise RuntimeError(f"chromium closed the pipe (while waiting for {method})")
                self._buf += data

    def open(self, url: str, width: int = 1200, height: int = 800) -> "Page":
        """A new tab of ``width`` x ``height`` CSS pixels showing ``url``."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=session)
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=session)
        self.call("Page.navigate", {"url": url}, session=session)
        return Page(self, session)

    def close(self):
        try:
            self.call("Browser.close", timeout=3)
        except Exception:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self._r)
        os.close(self._w)


class Page:
    """A tab: ``js(expression)`` is the expression's value in the page."""

    def __init__(self, browser: DevTools, session: str):
        self.browser = browser
        self.session = session

    def js(self, expression: str):
        result = self.browser.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                                   session=self.session)
        return result["result"].get("value")

    def screenshot(self) -> bytes:
        import base64

        return base64.b64decode(self.browser.call("Page.captureScreenshot", {"format": "png"},
                                                  session=self.session)["data"])


def test_web_page_streams_a_reply(server, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    if os.name != "posix":
        pytest.skip("the DevTools pipe is driven with POSIX file descriptors")
    expected = server.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello there"}], max_tokens=24, temperature=0,
    ).choices[0].message.content
    before = server.stats()["requests"]

    browser = DevTools(chromium, str(tmp_path / "profile"))
    try:
        js = browser.open(server.url + "/?temperature=0&max_tokens=24").js
        deadline = time.monotonic() + 20
        while js("document.readyState") != "complete" or not js("document.getElementById('model').textContent"
                                                                 ".startsWith('model:')"):
            assert time.monotonic() < deadline, "the page did not load"
            time.sleep(0.05)
        # type a message and press Enter, as a user would
        js("""(() => { const box = document.getElementById('input'); box.value = 'Hello there';
               box.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true})); })()""")
        while js("document.body.dataset.status") not in ("done", "error"):
            assert time.monotonic() < deadline, "no reply came"
            time.sleep(0.05)
        state = js("""JSON.stringify({status: document.body.dataset.status,
                      user: [...document.querySelectorAll('.msg.user')].map(e => e.textContent),
                      bot: [...document.querySelectorAll('.msg.assistant')].map(e => e.textContent),
                      streaming: document.querySelectorAll('.streaming').length})""")
    finally:
        browser.close()
    state = json.loads(state)
    assert state["status"] == "done", state
    assert state["user"] == ["Hello there"] and state["streaming"] == 0
    assert state["bot"] == [expected]
    assert server.stats()["requests"] == before + 1


def test_docs_page_lists_the_operations_in_chromium(server, tmp_path):
    """/docs rendered by a real browser with no internet needed: Swagger UI's scripts come from
    this server, and the page lists the API's operations. The screenshot is kept in tmp_path."""
    pytest.importorskip("fastapi_offline")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    if os.name != "posix":
        pytest.skip("the DevTools pipe is driven with POSIX file descriptors")
    browser = DevTools(chromium, str(tmp_path / "profile"))
    try:
        page = browser.open(server.url + "/docs", height=2400)
        js = page.js
        deadline = time.monotonic() + 30
        while not js("document.querySelectorAll('.opblock').length"):
            assert time.monotonic() < deadline, "Swagger UI did not render the operations"
            time.sleep(0.1)
        listed = js("[...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent.trim())")
        methods = js("[...document.querySelectorAll('.opblock-summary-method')].map(e => e.textContent.trim())")
        png = page.screenshot()
    finally:
        browser.close()
    (tmp_path / "docs.png").write_bytes(png)
    assert png.startswith(b"\x89PNG") and len(png) > 20_000  # a rendered page, not a blank one
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/health",
                 "/tokenize", "/detokenize", "/v1/states"):
        assert path in listed, (path, listed)
    assert "POST" in methods and "GET" in methods
