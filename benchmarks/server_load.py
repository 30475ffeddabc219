"""Drives `rwkvcpp serve` with N concurrent streaming clients and prints throughput and latency.

    python benchmarks/server_load.py MODEL [--clients 1,2,4,8] [--tokens 64] [--server-args "..."] [--json]
    python benchmarks/server_load.py --url http://127.0.0.1:8000 [--clients ...]

Without --url the script starts `rwkvcpp serve MODEL` on a free loopback port (with --server-args
added to its command line, e.g. "--threads 2 --max-concurrent 8"), waits for /health, and stops it
at the end; with --url it uses a server that is already running (any OpenAI-compatible one).

For each N of --clients, N requests are sent at once from N threads with the official `openai`
client, each a streaming text completion (--api chat: a chat completion) of its own prompt (a
number in front of --prompt, so no two share a cached prefix), after one warm-up request. Every
request is asked for exactly --tokens tokens: max_tokens is --tokens, logit_bias bans token 0 (the
end of text in the World vocabulary, a NUL byte in a byte vocabulary) and a text completion has no
stop strings, so a request ends only at max_tokens; the count is checked against the usage the
server reports (stream_options include_usage), and requests that ended early are counted in the
output. (Chat replies end at the chat template's turn stops, which a request cannot turn off.)
Sampling is greedy (--temperature 0) unless asked otherwise.

Per N it prints:
- tokens/s: all the round's completion tokens over its wall time (first request sent to last
  stream closed), and that figure divided by N = 1's;
- TTFT: time from sending a request to the first chunk with text, p50 and p95 over the requests;
- ms/token: each request's (time of its last chunk - time of its first text) / (tokens - 1), p50
  and p95 over the requests, and p95 divided by N = 1's;
- gap: the times between successive text chunks of each stream, p50 and p95 over all the
  round's gaps (a chunk usually carries one token; a stop string being held back or an
  unfinished UTF-8 character merges tokens into one chunk, so gaps can run longer than
  ms/token).
Percentiles interpolate linearly between the samples (with N = 1, p50 = p95).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

DEFAULT_PROMPT = ("The history of the lighthouse begins with fires lit on hilltops to guide ships home. "
                  "Write a long, detailed account of how lighthouses changed over the centuries.")
BANNED_END_TOKEN = {"0": -100}  # -100 bans the token, as OpenAI documents logit_bias


@dataclass
class RequestTiming:
    """One streamed request, times in seconds from time.perf_counter()."""

    sent: float
    first_text: Optional[float] = None
    last_chunk: Optional[float] = None  # the last chunk with text or a finish reason
    closed: Optional[float] = None
    text_times: list = field(default_factory=list)
    tokens: int = 0
    finish_reason: Optional[str] = None

    @property
    def ms_per_token(self) -> Optional[float]:
        if self.first_text is None or self.tokens < 2:
            return None
        return (self.last_chunk - self.first_text) / (self.tokens - 1) * 1000.0

    @property
    def gaps_ms(self) -> list:
        return [(b - a) * 1000.0 for a, b in zip(self.text_times, self.text_times[1:])]


def client_counts(text: str) -> list:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected client counts such as 1,2,4,8, not {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"client counts must be at least 1: {text!r}")
    return counts


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class LocalServer:
    """`rwkvcpp serve MODEL` in a child process on a free loopback port; its log goes to a
    temporary file, shown when it fails to come up."""

    def __init__(self, model: str, server_args: list, startup_timeout: float):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "rwkvcpp", "serve", model, "--host", "127.0.0.1",
                        "--port", str(self.port), "--log-level", "warning", *server_args]
        self.startup_timeout = startup_timeout
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process: Optional[subprocess.Popen] = None

    def __enter__(self) -> "LocalServer":
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.process.returncode} before answering "
                                   f"/health:\n  {shlex.join(self.command)}\n{self.log_tail()}")
            try:
                get_json(self.url + "/health", timeout=2.0)
                return self
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"the server did not answer /health within {self.startup_timeout:.0f} s:\n"
                                   f"  {shlex.join(self.command)}\n{self.log_tail()}")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def log_tail(self, chars: int = 3000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-chars:]


def stream_one(client, api: str, model: str, prompt: str, tokens: int, temperature: float) -> RequestTiming:
    """Sends one streaming request and records when its chunks arrive."""
    common = dict(model=model, max_tokens=tokens, temperature=temperature, logit_bias=BANNED_END_TOKEN,
                  stream=True, stream_options={"include_usage": True})
    timing = RequestTiming(sent=time.perf_counter())
    if api == "chat":
        stream = client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common)
    else:
        stream = client.completions.create(prompt=prompt, **common)
    chunks_with_text = 0
    for chunk in stream:
        now = time.perf_counter()
        if chunk.usage is not None:
            timing.tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            text = choice.delta.content if api == "chat" else choice.text
            if text:
                chunks_with_text += 1
                timing.text_times.append(now)
                if timing.first_text is None:
                    timing.first_text = now
            if text or choice.finish_reason:
                timing.last_chunk = now
            if choice.finish_reason:
                timing.finish_reason = choice.finish_reason
    timing.closed = time.perf_counter()
    if not timing.tokens:  # a server that ignores include_usage: one token per chunk, as near as we get
        timing.tokens = chunks_with_text
    return timing


def percentiles(values) -> dict:
    if not values:
        return {"p50": None, "p95": None}
    p50, p95 = np.percentile(np.asarray(values, dtype=np.float64), [50, 95])
    return {"p50": float(p50), "p95": float(p95)}


def run_round(client, n: int, args, model: str, round_index: int) -> dict:
    """N requests at once, each from its own thread, released together."""
    results: list = [None] * n
    errors: list = []
    start = threading.Barrier(n)

    def worker(i: int) -> None:
        prompt = f"{round_index * 1000 + i}. {args.prompt}"
        try:
            start.wait()
            results[i] = stream_one(client, args.api, model, prompt, args.tokens, args.temperature)
        except Exception as e:  # reported for the whole round below
            errors.append(f"client {i + 1} of {n}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} requests failed:\n  " + "\n  ".join(errors[:5]))
    wall = max(r.closed for r in results) - min(r.sent for r in results)
    total = sum(r.tokens for r in results)
    short = [r for r in results if r.tokens < args.tokens]
    return {
        "clients": n,
        "tokens": total,
        "wall_seconds": wall,
        "tokens_per_second": total / wall,
        "ttft_ms": percentiles([(r.first_text - r.sent) * 1000.0 for r in results if r.first_text is not None]),
        "ms_per_token": percentiles([r.ms_per_token for r in results if r.ms_per_token is not None]),
        "gap_ms": percentiles([g for r in results for g in r.gaps_ms]),
        "short_requests": len(short),
        "finish_reasons": sorted({str(r.finish_reason) for r in short}),
    }


def add_ratios(rounds: list) -> None:
    base = rounds[0]
    for r in rounds:
        r["throughput_vs_first"] = r["tokens_per_second"] / base["tokens_per_second"]
        p95, base_p95 = r["ms_per_token"]["p95"], base["ms_per_token"]["p95"]
        r["ms_per_token_p95_vs_first"] = p95 / base_p95 if p95 and base_p95 else None


def print_table(rounds: list, args, server: str) -> None:
    base = rounds[0]["clients"]

    def ms(value) -> str:
        return "-" if value is None else f"{value:.1f}"

    endpoint = "/v1/chat/completions" if args.api == "chat" else "/v1/completions"
    print(f"{server}: {endpoint}, streamed, {args.tokens} tokens a request, temperature {args.temperature}")
    print(f"| clients | tokens/s | vs {base} | TTFT p50 ms | TTFT p95 ms | ms/token p50 | ms/token p95 | "
          f"p95 vs {base} | gap p50 ms | gap p95 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rounds:
        ratio = r["ms_per_token_p95_vs_first"]
        print(f"| {r['clients']} | {r['tokens_per_second']:.1f} | {r['throughput_vs_first']:.2f} | "
              f"{ms(r['ttft_ms']['p50'])} | {ms(r['ttft_ms']['p95'])} | {ms(r['ms_per_token']['p50'])} | "
              f"{ms(r['ms_per_token']['p95'])} | {'-' if ratio is None else f'{ratio:.2f}'} | "
              f"{ms(r['gap_ms']['p50'])} | {ms(r['gap_ms']['p95'])} |")
    for r in rounds:
        if r["short_requests"]:
            print(f"note: {r['short_requests']} of the {r['clients']} requests with {r['clients']} clients ended "
                  f"before {args.tokens} tokens (finish reason {', '.join(r['finish_reasons'])}); their tokens "
                  "still count in tokens/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="model file for `rwkvcpp serve` (omit with --url)")
    parser.add_argument("--url", help="use this running server (e.g. http://127.0.0.1:8000) instead of starting one")
    parser.add_argument("--server-args", default="", metavar="ARGS",
                        help="more arguments for `rwkvcpp serve`, one string (e.g. \"--threads 2 --max-concurrent 8\")")
    parser.add_argument("--clients", type=client_counts, default=[1, 2, 4, 8], metavar="N,N,...",
                        help="numbers of concurrent clients, one round each (default 1,2,4,8)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens each request generates (default 64)")
    parser.add_argument("--api", choices=("completions", "chat"), default="completions",
                        help="/v1/completions (default) or /v1/chat/completions")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt text (each request puts a number in front)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    parser.add_argument("--api-key", default=os.environ.get("RWKVCPP_API_KEY", "none"),
                        help="bearer key for the server (default: $RWKVCPP_API_KEY)")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for /health")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if (args.model is None) == (args.url is None):
        parser.error("give a MODEL to serve, or --url of a running server (not both)")
    if args.tokens < 2:
        parser.error("--tokens must be at least 2 (the time per token needs two)")
    if args.url and args.server_args:
        parser.error("--server-args applies to the server this script starts, not to --url")
    if args.model and not os.path.isfile(args.model):
        parser.error(f"no model file at {args.model}")
    try:
        import openai
    except ImportError:
        sys.exit("error: this benchmark needs the official OpenAI client: pip install openai")

    try:
        if args.url:
            report = benchmark(openai, args.url.rstrip("/").removesuffix("/v1"), args, args.url)
        else:
            with LocalServer(args.model, shlex.split(args.server_args), args.startup_timeout) as server:
                label = shlex.join(["rwkvcpp", "serve", args.model, *shlex.split(args.server_args)])
                report = benchmark(openai, server.url, args, label)
    except (RuntimeError, OSError, openai.OpenAIError) as e:
        sys.exit(f"error: {e}")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report["rounds"], args, report["server"])


def benchmark(openai, url: str, args, label: str) -> dict:
    try:
        health = get_json(url + "/health")
    except (OSError, ValueError) as e:
        raise RuntimeError(f"no answer from {url}/health: {e}") from None
    client = openai.OpenAI(base_url=url + "/v1", api_key=args.api_key, max_retries=0, timeout=3600.0)
    model = health.get("model") or "rwkv"
    stream_one(client, args.api, model, f"warm-up. {args.prompt}", args.tokens, args.temperature)
    rounds = [run_round(client, n, args, model, k) for k, n in enumerate(args.clients)]
    add_ratios(rounds)
    return {
        "server": label,
        "model": model,
        "api": args.api,
        "tokens_per_request": args.tokens,
        "temperature": args.temperature,
        "rounds": rounds,
    }


if __name__ == "__main__":
    main()
