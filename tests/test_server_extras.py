"""What the server offers beyond OpenAI's core calls: the token endpoints (llama.cpp's /tokenize
and /detokenize, llama-cpp-python's /extras/*), logprobs over HTTP, and docs that work offline;
in-process through FastAPI's test client."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from rwkvcpp import Model  # noqa: E402
from rwkvcpp.server import ServerConfig, create_app  # noqa: E402

KEY = "k-123"


@pytest.fixture(scope="module")
def model():
    return Model(threads=2)


@pytest.fixture(scope="module")
def client(model):
    # The test client's requests carry "Host: testserver".
    with TestClient(create_app(model, ServerConfig(api_key=[KEY, "second-key"], allowed_hosts=["testserver"]))) as c:
        c.headers["Authorization"] = f"Bearer {KEY}"
        yield c


def test_tokenize_round_trip(client, model):
    text = "Hello, wörld"
    got = client.post("/tokenize", json={"content": text}).json()
    assert got == {"tokens": model.tokenize(text)}
    pieces = client.post("/tokenize", json={"content": "ö", "with_pieces": True}).json()["tokens"]
    assert pieces == [{"id": 0xC3, "piece": [0xC3]}, {"id": 0xB6, "piece": [0xB6]}]  # bytes: half a character each
    assert client.post("/detokenize", json={"tokens": got["tokens"]}).json() == {"content": text}
    assert client.post("/extras/tokenize", json={"input": text}).json() == got
    assert client.post("/extras/tokenize/count", json={"input": text}).json() == {"count": len(got["tokens"])}
    assert client.post("/extras/detokenize", json={"tokens": got["tokens"]}).json() == {"text": text}


def test_token_errors_and_key(client, model):
    bad = client.post("/detokenize", json={"tokens": [1, model.n_vocab]})
    assert bad.status_code == 400 and "outside this model's vocabulary" in bad.json()["error"]["message"]
    assert client.post("/tokenize", json={"content": 5}).status_code == 400
    anonymous = client.post("/tokenize", json={"content": "x"}, headers={"Authorization": ""})
    assert anonymous.status_code == 401


def test_logprobs_over_http(client, model):
    body = {"model": "x", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "seed": 3,
            "logprobs": True, "top_logprobs": 2}
    reply = client.post("/v1/chat/completions", json=body).json()
    same = model.create_chat_completion(body["messages"], max_tokens=6, seed=3, logprobs=True, top_logprobs=2)
    # The server reads the prompt through its state cache (all but the last token, then that one):
    # the same tokens, logprobs equal to float rounding.
    got, want = reply["choices"][0]["logprobs"]["content"], same["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in got] == [e["token"] for e in want]
    assert [e["logprob"] for e in got] == pytest.approx([e["logprob"] for e in want], abs=1e-4)
    assert [[t["token"] for t in e["top_logprobs"]] for e in got] == [[t["token"] for t in e["top_logprobs"]]
                                                                      for e in want]
    scored = client.post("/v1/completions", json={"prompt": "The cat sat", "max_tokens": 0, "echo": True,
                                                  "logprobs": 1}).json()["choices"][0]
    assert scored["logprobs"]["token_logprobs"][0] is None and len(scored["logprobs"]["tokens"]) == len("The cat sat")
    refused = client.post("/v1/chat/completions", json={**body, "logprobs": False})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "top_logprobs"
    assert client.post("/v1/completions", json={"prompt": "x", "logprobs": 21}).status_code == 400


def test_docs_work_offline(client):
    """/docs and /redoc load their scripts from this server, not from a CDN."""
    pytest.importorskip("fastapi_offline")
    assert client.get("/docs", headers={"Authorization": ""}).status_code == 401  # the docs follow the key
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html
        scripts = [part.split('"')[0] for part in html.split('src="')[1:]]
        assert scripts and all(s.startswith("/") for s in scripts), scripts
        for script in scripts:
            asset = client.get(script)
            assert asset.status_code == 200 and len(asset.content) > 100_000, script
    assert "/tokenize" in client.get("/openapi.json").json()["paths"]


def test_structured_output_with_the_openai_client(client):
    pytest.importorskip("llguidance")
    openai = pytest.importorskip("openai")
    import json

    api = openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=client)
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6},
                                               "days": {"type": "integer", "minimum": 1, "maximum": 9}},
              "required": ["city", "days"], "additionalProperties": False}
    reply = api.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Plan a trip"}], max_tokens=80, seed=1,
        response_format={"type": "json_schema", "json_schema": {"name": "trip", "schema": schema}})
    data = json.loads(reply.choices[0].message.content)
    assert set(data) == {"city", "days"} and 1 <= data["days"] <= 9 and len(data["city"]) <= 6
    text = api.completions.create(model="x", prompt="Answer:", max_tokens=10, seed=2,
                                  extra_body={"grammar": 'root ::= "yes" | "no"'}).choices[0].text
    assert text in ("yes", "no")
    bad = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                    "response_format": {"type": "json_schema",
                                                                        "json_schema": {"schema": {"type": "objekt"}}}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "response_format"
    both = client.post("/v1/completions", json={"prompt": "x", "grammar": 'root ::= "a"',
                                                "json_schema": {"type": "object"}})
    assert both.status_code == 400 and "not several" in both.json()["error"]["message"]


def test_metrics_in_prometheus_text(client):
    parser = pytest.importorskip("prometheus_client.parser")
    client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 5, "seed": 1})
    with client.stream("POST", "/v1/completions", json={"prompt": "Hi", "max_tokens": 4, "stream": True}) as r:
        lines = list(r.iter_lines())  # the whole stream: its timing is recorded as it ends
    assert lines.count("data: [DONE]") == 1
    assert client.get("/metrics", headers={"Authorization": ""}).status_code == 401
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in parser.text_string_to_metric_families(answer.text)}
    requests = {(s.labels["endpoint"], s.labels["status"]): s.value
                for s in families["rwkvcpp_http_requests"].samples if s.name.endswith("_total")}
    assert requests[("/v1/completions", "200")] >= 2
    ttft = {s.name: s.value for s in families["rwkvcpp_time_to_first_token_seconds"].samples}
    assert ttft["rwkvcpp_time_to_first_token_seconds_count"] >= 2
    assert ttft["rwkvcpp_time_to_first_token_seconds_sum"] > 0
    per_token = {s.name: s.value for s in families["rwkvcpp_time_per_output_token_seconds"].samples}
    assert per_token["rwkvcpp_time_per_output_token_seconds_count"] >= 2
    counters = {s.name: s.value for f in families.values() for s in f.samples}
    assert counters["rwkvcpp_completion_tokens_total"] >= 9
    assert counters["rwkvcpp_prompt_tokens_total"] >= len("Hello") + len("Hi")
    assert any(name.startswith("rwkvcpp_scheduler_") for name in counters)
    assert families["rwkvcpp_scheduler_steps"].type == "counter" and counters["rwkvcpp_scheduler_steps_total"] >= 9
    assert families["rwkvcpp_scheduler_running"].type == "gauge"


def test_keys_hosts_and_cors(model):
    config = ServerConfig(api_key=["a-key", "b-key"], cors_origins=["https://app.example"], public_docs=True)
    with TestClient(create_app(model, config), base_url="http://127.0.0.1:8000") as c:
        for key, status in (("a-key", 200), ("b-key", 200), ("c-key", 401)):
            assert c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == status
        assert c.get("/health").status_code == 200 and c.get("/openapi.json").status_code == 200  # public docs
        # DNS rebinding: a page of another site whose name resolves to 127.0.0.1
        rebound = c.get("/health", headers={"Host": "evil.example:8000"})
        assert rebound.status_code == 400 and rebound.json()["error"]["code"] == "invalid_host"
        assert c.get("/health", headers={"Host": "localhost:8000"}).status_code == 200
        assert c.get("/health", headers={"Host": "[::1]:8000"}).status_code == 200
        preflight = c.options("/v1/chat/completions", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        other = c.options("/v1/chat/completions", headers={"Origin": "https://other.example",
                                                           "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in other.headers
    with pytest.raises(ValueError, match="without spaces"):
        ServerConfig(api_key="two words")
    with TestClient(create_app(model, ServerConfig(host="0.0.0.0")), base_url="http://anything.example") as c:
        assert c.get("/health").status_code == 200  # not bound to loopback: any name


def test_serve_refuses_empty_or_missing_keys(tmp_path):
    import os
    import subprocess
    import sys

    def serve(*args, env=None):
        return subprocess.run([sys.executable, "-m", "rwkvcpp", "serve", *args], capture_output=True, text=True,
                              timeout=120, env={**os.environ, **(env or {})})

    empty = serve(env={"RWKVCPP_API_KEY": " "})
    assert empty.returncode == 2
    assert empty.stderr.splitlines()[0] == ("rwkvcpp serve: error: RWKVCPP_API_KEY is set but empty: unset it to "
                                            "serve without a key, or set a key")
    missing = serve("--api-key-file", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "--api-key-file: cannot read" in missing.stderr.splitlines()[0]
    (tmp_path / "keys").write_text("# our keys\n\n")
    blank = serve("--api-key-file", str(tmp_path / "keys"))
    assert blank.returncode == 2 and "holds no key" in blank.stderr.splitlines()[0]


@pytest.fixture
def live_server(model):
    """A real uvicorn server in a thread, with short connection limits."""
    import socket
    import threading
    import time

    import uvicorn

    from rwkvcpp.server.connections import uvicorn_settings

    config = ServerConfig(header_timeout=1.0, body_timeout=1.0, max_connections=3)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    settings = uvicorn_settings(config)
    server = uvicorn.Server(uvicorn.Config(create_app(model, config), log_level="warning", **settings))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield sock.getsockname()
    server.should_exit = True
    thread.join(10)


def _closed_within(conn, seconds: float) -> bool:
    """Whether the server closes ``conn`` (reading what it sends) within ``seconds``."""
    import time

    conn.settimeout(seconds)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            if not conn.recv(4096):
                return True
    except OSError:  # a timeout: still open
        return False
    return False


def test_slow_and_idle_connections_are_cut(live_server):
    import socket

    idle = socket.create_connection(live_server)
    assert _closed_within(idle, 4), "an idle connection must be closed after the header timeout"
    slow = socket.create_connection(live_server)
    for part in (b"GET /health HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n"):
        slow.sendall(part)
    assert _closed_within(slow, 4), "headers that never end must not hold the connection"
    body = socket.create_connection(live_server)
    body.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"prompt\"")
    body.settimeout(5)
    assert body.recv(4096).startswith(b"HTTP/1.1 408"), "a body that stops arriving gets 408"
    for conn in (idle, slow, body):
        conn.close()


def test_connection_cap_answers_503(live_server):
    import socket
    import time

    held = [socket.create_connection(live_server) for _ in range(3)]
    extra = socket.create_connection(live_server)
    extra.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    extra.settimeout(5)
    assert extra.recv(4096).startswith(b"HTTP/1.1 503")
    for conn in held + [extra]:
        conn.close()
    time.sleep(0.3)  # the server sees the closes
    fresh = socket.create_connection(live_server)  # the held ones are gone: served again
    fresh.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    fresh.settimeout(5)
    assert fresh.recv(4096).startswith(b"HTTP/1.1 200")
    fresh.close()


@pytest.fixture
def session_client(model, tmp_path):
    config = ServerConfig(states_dir=str(tmp_path / "states"), max_states=3, allowed_hosts=["testserver"])
    with TestClient(create_app(model, config)) as c:
        yield c


def test_saved_session_continues_exactly(session_client, model):
    from rwkvcpp.chat_format import conversation_text, render_chat
    from rwkvcpp.generate import Generator
    from rwkvcpp.sampling import SamplingParams

    saved = session_client.post("/v1/states", json={"prompt": "The cat"}).json()
    assert saved["object"] == "rwkv.state" and saved["tokens"] == len("The cat") and saved["id"].startswith("state_")
    assert session_client.get(f"/v1/states/{saved['id']}").json()["bytes"] == saved["bytes"]
    reply = session_client.post("/v1/completions", json={"prompt": " sat", "rwkv_state": saved["id"],
                                                         "max_tokens": 12, "temperature": 0}).json()
    state = model.eval_sequence(model.tokenize("The cat"))[1]
    want = Generator(model).complete(" sat", SamplingParams(max_tokens=12, temperature=0, stop_tokens=()), state)
    assert reply["choices"][0]["text"] == want.text

    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    turn = session_client.post("/v1/states", json={"messages": history}).json()
    nxt = [{"role": "user", "content": "How are you?"}]
    chat = session_client.post("/v1/chat/completions", json={"messages": nxt, "rwkv_state": turn["id"],
                                                             "max_tokens": 10, "temperature": 0}).json()
    # the saved conversation, then the new turn: the text of the whole conversation
    assert conversation_text(history) + "\n\n" + render_chat(nxt).text == render_chat(history + nxt).text
    state = model.eval_sequence(model.tokenize(conversation_text(history)))[1]
    want = Generator(model).complete("\n\n" + render_chat(nxt).text,
                                     SamplingParams(max_tokens=10, temperature=0, stop=("\n\nUser:", "\n\nSystem:")),
                                     state)
    assert chat["choices"][0]["message"]["content"] == want.text.strip()


def test_saved_sessions_are_bounded_and_checked(session_client, tmp_path):
    ids = [session_client.post("/v1/states", json={"prompt": f"text {i}"}).json()["id"] for i in range(4)]
    assert session_client.get(f"/v1/states/{ids[0]}").status_code == 404, "the least recently used went"
    assert all(session_client.get(f"/v1/states/{i}").status_code == 200 for i in ids[1:])
    bad = session_client.post("/v1/completions", json={"prompt": "x", "rwkv_state": "../../etc/passwd"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_state_id"
    gone = session_client.post("/v1/completions", json={"prompt": "x", "rwkv_state": ids[0]})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "state_not_found"
    assert session_client.delete(f"/v1/states/{ids[1]}").json()["deleted"] is True
    assert session_client.post("/v1/states", json={"prompt": "a", "messages": []}).status_code == 400
    # another model's state is refused
    other = tmp_path / "other.bin"
    from support.checkpoints import make_checkpoint

    from rwkvcpp.writer import write_model

    write_model(other, make_checkpoint("v7", n_layer=1, n_embed=64, n_vocab=256, seed=1), dtype="FP16")
    config = ServerConfig(states_dir=str(tmp_path / "states"), allowed_hosts=["testserver"])
    with TestClient(create_app(Model(other), config)) as c:
        refused = c.post("/v1/completions", json={"prompt": "x", "rwkv_state": ids[2]})
        assert refused.status_code == 400 and "cannot be used" in refused.json()["error"]["message"]


def test_sessions_off_by_default(client):
    off = client.post("/v1/states", json={"prompt": "x"})
    assert off.status_code == 404 and off.json()["error"]["code"] == "sessions_off"


def test_health_says_loading_until_the_model_is_ready(model):
    import threading

    release = threading.Event()

    def load():
        release.wait(30)
        return model

    config = ServerConfig(allowed_hosts=["testserver"])
    with TestClient(create_app(load=load, config=config)) as c:
        loading = c.get("/health")
        assert loading.status_code == 503 and loading.json() == {"status": "loading"}
        assert loading.headers["retry-after"]
        early = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert early.status_code == 503 and early.json()["error"]["code"] == "model_loading"
        assert c.get("/metrics").status_code == 200  # the request figures exist already
        release.set()
        for _ in range(200):
            if c.get("/health").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert c.get("/health").json()["status"] == "ok"
        done = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] >= 1


def test_health_reports_a_failed_load():
    import threading

    failures = []

    def load():
        raise FileNotFoundError("model.bin: no such file")

    with TestClient(create_app(load=load, config=ServerConfig(allowed_hosts=["testserver"]),
                               on_load_error=failures.append)) as c:
        for _ in range(200):
            if failures:
                break
            threading.Event().wait(0.01)
        health = c.get("/health")
        assert health.status_code == 503
        assert health.json() == {"status": "error", "error": "model.bin: no such file"}
        refused = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
        assert refused.status_code == 503 and "failed to load: model.bin: no such file" in \
            refused.json()["error"]["message"]
    assert len(failures) == 1 and isinstance(failures[0], FileNotFoundError)
    with pytest.raises(TypeError, match="a model or a load function"):
        create_app()
