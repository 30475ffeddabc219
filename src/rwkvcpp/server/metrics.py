"""``GET /metrics``: the server's figures in Prometheus' text format (prometheus-client).

* per request: a count by endpoint and status, the duration, and for generations the time to
  the first token and the time per output token after it (histograms);
* read at each scrape: the engine's token counters (prompt tokens, of those evaluated, completion
  and embedding tokens), the state cache's size, and the scheduler's figures (running, waiting,
  sequences in the batch, ...), whatever numbers its ``stats()`` reports.

Each app has its own registry, so several apps in one process (tests) do not mix their figures.
Without prometheus-client the endpoint answers 503 saying what to install; nothing else changes.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from fastapi import APIRouter, Request
from fastapi.responses import Response

from .errors import OpenAIError

__all__ = ["Metrics", "router", "MetricsMiddleware"]

# Endpoints get their own label; anything else is "other", so clients cannot grow the label set.
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/tokenize",
             "/detokenize", "/health", "/metrics")
START_KEY = "rwkvcpp.started"  # where the middleware puts a request's start time in its scope

router = APIRouter(tags=["server"])


class Metrics:
    """The app's registry and the series observed per request."""

    def __init__(self, app_state: Any):
        try:
            import prometheus_client as prom
        except ImportError:
            self.registry = None
            return
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter("rwkvcpp_http_requests", "HTTP requests answered", ["endpoint", "status"],
                                     registry=self.registry)
        self.duration = prom.Histogram("rwkvcpp_http_request_duration_seconds", "time to answer a request",
                                       ["endpoint"], registry=self.registry,
                                       buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.first_token = prom.Histogram("rwkvcpp_time_to_first_token_seconds",
                                          "from a generation request's arrival to its first generated text",
                                          registry=self.registry,
                                          buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64))
        self.per_token = prom.Histogram("rwkvcpp_time_per_output_token_seconds",
                                        "a request's mean time between generated tokens after the first",
                                        registry=self.registry,
                                        buckets=(0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5))
        self.registry.register(_LiveFigures(app_state))

    def observe_generation(self, started: Optional[float], first: Optional[float], last: Optional[float],
                           pieces: int) -> None:
        """A generation ended: ``first`` / ``last`` are when its first and last pieces came."""
        if self.registry is None or first is None:
            return
        if started is not None:
            self.first_token.observe(first - started)
        if last is not None and pieces > 1:
            self.per_token.observe((last - first) / (pieces - 1))


# The scheduler's figures that only grow (the others are levels: running, waiting, settings).
SCHEDULER_COUNTERS = frozenset({"steps"})


class _LiveFigures:
    """Figures read from the engine and scheduler at each scrape."""

    def __init__(self, app_state: Any):
        self.state = app_state

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if self.state.engine is None:  # still loading: only the request figures exist
            return
        engine_stats = self.state.engine.stats()
        cache = engine_stats.pop("cache", {})
        for name, value in engine_stats.items():
            if isinstance(value, (int, float)):
                yield CounterMetricFamily(f"rwkvcpp_{name}", f"engine counter: {name}", value=value)
        for name, value in cache.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield GaugeMetricFamily(f"rwkvcpp_state_cache_{name}", f"state cache: {name}", value=value)
        for name, value in self.state.scheduler.stats().items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                family = CounterMetricFamily if name in SCHEDULER_COUNTERS else GaugeMetricFamily
                yield family(f"rwkvcpp_scheduler_{name}", f"scheduler: {name}", value=value)


class MetricsMiddleware:
    """Times and counts every HTTP request (raw ASGI: the status is seen as it is sent)."""

    def __init__(self, app, app_state: Any):
        self.app = app
        self.app_state = app_state

    async def __call__(self, scope, receive, send):
        metrics: Optional[Metrics] = getattr(self.app_state, "metrics", None)
        if scope["type"] != "http" or metrics is None or metrics.registry is None:
            return await self.app(scope, receive, send)
        started = scope[START_KEY] = time.perf_counter()
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = [500]

        async def watching_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        finally:
            metrics.requests.labels(endpoint, str(status[0])).inc()
            metrics.duration.labels(endpoint).observe(time.perf_counter() - started)


@router.get("/metrics")
async def metrics_endpoint(request: Request):
    """The server's figures in Prometheus' text format."""
    metrics: Metrics = request.app.state.metrics
    if metrics.registry is None:
        raise OpenAIError(503, "metrics need the prometheus-client package: pip install prometheus-client",
                          type="server_error", code="metrics_unavailable")
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
