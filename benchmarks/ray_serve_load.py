"""The server as Ray Serve replicas: aggregate throughput by replica layout, and the cost of Serve's hop.

    python benchmarks/ray_serve_load.py MODEL [--layouts 1x1,2x1,1x2] [--clients 1,2,4,8] [--tokens 64]
                                              [--hop-requests 200] [--json]

Starts a local Ray cluster (as many CPUs as this machine has) and, for each REPLICASxTHREADS of
--layouts, deploys rwkvcpp.scale.serve.build_app(MODEL, replicas=REPLICAS, threads=THREADS)
behind Serve's HTTP proxy on a free loopback port and runs server_load.py's rounds against it:
N concurrent streaming clients for each N of --clients, each request exactly --tokens tokens
(server_load.py's docstring says how each figure is taken).

Then the hop: the same model served once by `rwkvcpp serve --threads T` directly and once by one
Serve replica of T threads (T: the first layout's threads), each asked --hop-requests times, one
request at a time over one kept-alive connection, for GET /health and for a one-token text
completion (not streamed); p50 and p95 of each, and the difference of the p50s: what Serve's
proxy and its call to the replica add to a request.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_load  # noqa: E402  (this folder's streaming-client benchmark)


def layouts(text: str) -> list:
    try:
        pairs = [tuple(int(n) for n in part.split("x")) for part in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or min(p) < 1 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected layouts such as 1x1,2x1 (replicas x threads), not {text!r}")
    return pairs


def latencies(client, path: str, body, count: int) -> dict:
    """p50 / p95 in ms of ``count`` requests sent one after another, after five unmeasured."""
    times = []
    for i in range(count + 5):
        sent = time.perf_counter()
        response = client.post(path, json=body) if body is not None else client.get(path)
        elapsed = time.perf_counter() - sent
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:200]}")
        if i >= 5:
            times.append(elapsed * 1000.0)
    return server_load.percentiles(times)


def hop_figures(url: str, count: int) -> dict:
    import httpx

    one_token = {"prompt": "The", "max_tokens": 1, "temperature": 0}
    with httpx.Client(base_url=url, timeout=60) as client:
        return {"health_ms": latencies(client, "/health", None, count),
                "completion_1_token_ms": latencies(client, "/v1/completions", one_token, count)}


def serve_layout(model: str, replicas: int, threads: int, port: int):
    from ray import serve

    from rwkvcpp.scale.serve import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(model, replicas=replicas, threads=threads), name="rwkvcpp", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model file (.bin)")
    parser.add_argument("--layouts", type=layouts, default=[(1, 1), (2, 1), (1, 2)], metavar="RxT,...",
                        help="replicas x threads each, measured in turn (default 1x1,2x1,1x2)")
    parser.add_argument("--clients", type=server_load.client_counts, default=[1, 2, 4, 8], metavar="N,N,...",
                        help="concurrent clients of each round (default 1,2,4,8)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens each request generates (default 64)")
    parser.add_argument("--hop-requests", type=int, default=200, help="requests timed for the hop (default 200)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if not os.path.isfile(args.model):
        parser.error(f"no model file at {args.model}")
    if args.tokens < 2 or args.hop_requests < 1:
        parser.error("--tokens must be at least 2 and --hop-requests at least 1")
    try:
        import openai
        import ray
        from ray import serve
    except ImportError as e:
        sys.exit(f"error: this benchmark needs Ray Serve and the OpenAI client ({e}): "
                 'pip install "rwkvcpp[ray,server]" openai')
    # server_load's rounds read these settings.
    args.api, args.prompt, args.temperature, args.api_key = "completions", server_load.DEFAULT_PROMPT, 0.0, "none"

    cores = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    report = {"cores": cores, "load_average_before": load_before, "layouts": [], "hop": {}}
    try:
        for replicas, threads in args.layouts:
            if replicas * threads > cores:
                sys.exit(f"error: layout {replicas}x{threads} needs {replicas * threads} CPUs; this machine has "
                         f"{cores}")
            url = serve_layout(args.model, replicas, threads, server_load.free_port())
            label = f"Ray Serve, {replicas} replica(s) x {threads} thread(s)"
            result = server_load.benchmark(openai, url, args, label)
            report["layouts"].append({"replicas": replicas, "threads": threads, **result})
            if (replicas, threads) == (1, args.layouts[0][1]):
                report["hop"]["ray_serve"] = hop_figures(url, args.hop_requests)
            serve.shutdown()
        hop_threads = args.layouts[0][1]
        if "ray_serve" not in report["hop"]:
            report["hop"]["ray_serve"] = hop_figures(serve_layout(args.model, 1, hop_threads,
                                                                  server_load.free_port()), args.hop_requests)
            serve.shutdown()
    finally:
        ray.shutdown()
    with server_load.LocalServer(args.model, ["--threads", str(hop_threads)], 120.0) as direct:
        report["hop"]["direct"] = hop_figures(direct.url, args.hop_requests)
    report["hop"]["threads"] = hop_threads
    report["load_average_after"] = os.getloadavg()[0]

    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{cores} cores; load average {load_before:.2f} before, {report['load_average_after']:.2f} after")
    for layout in report["layouts"]:
        server_load.print_table(layout["rounds"], args, layout["server"])
        print()
    hop = report["hop"]
    print(f"one request at a time, {args.hop_requests} each, 1 replica of {hop_threads} thread(s):")
    print("| request | direct p50 ms | direct p95 ms | Ray Serve p50 ms | Ray Serve p95 ms | added p50 ms |")
    print("|---|---|---|---|---|---|")
    for key, name in (("health_ms", "GET /health"), ("completion_1_token_ms", "1-token completion")):
        d, r = hop["direct"][key], hop["ray_serve"][key]
        print(f"| {name} | {d['p50']:.2f} | {d['p95']:.2f} | {r['p50']:.2f} | {r['p95']:.2f} | "
              f"{r['p50'] - d['p50']:.2f} |")


if __name__ == "__main__":
    main()
