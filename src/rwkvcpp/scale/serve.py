"""The OpenAI-compatible server as replicas on Ray Serve.

Each replica is a Ray actor holding one model (``threads`` threads, and as many CPUs reserved)
and serving :func:`rwkvcpp.server.create_app`'s whole app: the same endpoints, streaming, limits
and API key as ``rwkvcpp serve``. Ray Serve's HTTP proxy in front spreads requests over the
replicas (each request to the less busy of two); with ``max_replicas`` above ``replicas`` the
count follows the load, aiming at ``target_ongoing`` requests per replica. Every response says
which replica made it in the ``x-rwkvcpp-replica`` header.

Three ways in (docs/SCALING.md has the details):

* ``rwkvcpp serve MODEL --ray [ADDRESS] --replicas 2``;
* from Python: ``serve.run(build_app("model.bin", replicas=2))``;
* Ray's own ``serve run`` / ``serve deploy`` (and KubeRay's RayService) with the builder
  ``rwkvcpp.scale.serve:app_builder`` and ``model=...`` style arguments.

Saved sessions (``states_dir``, a folder every node mounts) continue on any replica; each
replica holds the states it saved or used last warm in memory, and a request that names its
state in the ``serve_multiplexed_model_id`` header goes to a replica holding it
(:mod:`.sessions`).

Needs ``pip install "rwkvcpp[ray,server]"`` (Ray 2.60 or later: the app is built inside each
replica, after its model is loaded).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Optional

from ray import serve

from ..server.config import ServerConfig

__all__ = ["RWKVReplica", "build_app", "app_builder", "builder_arguments", "REPLICA_HEADER", "SESSION_HEADER"]

REPLICA_HEADER = "x-rwkvcpp-replica"
# The header Serve's proxy routes on (model multiplexing): a client sets it to the rwkv_state id it sends.
SESSION_HEADER = "serve_multiplexed_model_id"


class _ReplicaHeader:
    """ASGI middleware: names the replica in every HTTP response."""

    def __init__(self, app, replica: str):
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


@serve.ingress()
class RWKVReplica:
    """One replica: the model, loaded once, and the app over it (built by Serve on the replica
    after ``__init__``, through ``__serve_build_asgi_app__``)."""

    def __init__(self, model: str, threads: Optional[int], config: dict, tokenizer: Optional[str] = None,
                 state: Optional[str] = None, warm_sessions: int = 16):
        from ..model import Model

        self.model = Model(model, threads=threads, tokenizer=tokenizer)
        self.config = ServerConfig(**config)
        self.initial_state = _load_state(self.model, state)
        self.warm_sessions = warm_sessions

    def __serve_build_asgi_app__(self):
        from ..server import create_app
        from .sessions import WarmSessions

        app = create_app(self.model, self.config, initial_state=self.initial_state)
        if app.state.sessions is not None:
            # Serve calls this on the loop that runs the app, where its multiplexing must run too.
            app.state.sessions = WarmSessions(app.state.sessions, self.model, self.warm_sessions,
                                              asyncio.get_running_loop())
        app.add_middleware(_ReplicaHeader, replica=serve.get_replica_context().replica_id.unique_id)
        return app

    def check_health(self) -> None:
        """Serve's health probe: a replica whose model is gone is replaced."""
        self.model._require_open()


def _load_state(model, path: Optional[str]):
    if path is None:
        return None
    from ..cli._common import load_start_state

    return load_start_state(model, path)


def build_app(model: str, *, replicas: int = 1, max_replicas: Optional[int] = None, threads: int = 1,
              config: Optional[ServerConfig] = None, tokenizer: Optional[str] = None, state: Optional[str] = None,
              target_ongoing: Optional[int] = None, warm_sessions: int = 16) -> serve.Application:
    """The Serve application: ``replicas`` replicas of the server over ``model`` (a .bin path
    every node can read), each reserving ``threads`` CPUs for a model of that many threads.
    With ``max_replicas`` above ``replicas``, Serve scales between the two, aiming at
    ``target_ongoing`` requests per replica (default: ``config.max_concurrent``, what one
    replica evaluates at once). ``state``: a saved or state-tuning file every request starts
    from. ``warm_sessions``: saved sessions each replica holds in memory (with
    ``config.states_dir``), one state each (``rwkvcpp info``'s ``state_len`` floats)."""
    config = config if config is not None else ServerConfig()
    for name, value in (("replicas", replicas), ("threads", threads), ("warm_sessions", warm_sessions)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
    if max_replicas is not None and max_replicas < replicas:
        raise ValueError(f"max_replicas ({max_replicas}) must be at least replicas ({replicas})")
    if max_replicas is not None and max_replicas > replicas:
        scaling: dict[str, Any] = {"autoscaling_config": {
            "min_replicas": replicas, "max_replicas": max_replicas,
            "target_ongoing_requests": target_ongoing or config.max_concurrent}}
    else:
        scaling = {"num_replicas": replicas}
    deployment = serve.deployment(RWKVReplica, name="rwkvcpp").options(
        ray_actor_options={"num_cpus": threads},
        # Past this the proxy holds requests back, and the replica's own queue bound (503) stays in force.
        max_ongoing_requests=config.max_concurrent + config.max_queue,
        **scaling,
    )
    return deployment.bind(model, threads, dataclasses.asdict(config), tokenizer, state, warm_sessions)


# Arguments of app_builder, as `serve run rwkvcpp.scale.serve:app_builder model=m.bin replicas=2`
# gives them (strings), with their types.
_BUILDER_ARGS = {"model": str, "replicas": int, "max_replicas": int, "threads": int, "tokenizer": str,
                 "state": str, "target_ongoing": int, "warm_sessions": int}


def app_builder(args: dict) -> serve.Application:
    """Ray Serve's application builder: ``model`` (required), ``replicas``, ``max_replicas``,
    ``threads``, ``tokenizer``, ``state``, ``target_ongoing``, ``warm_sessions``, and any
    :class:`~rwkvcpp.server.config.ServerConfig` field (``api_key``, ``max_concurrent``,
    ``states_dir``, ...). Values may be typed (a config file's ``args:``) or strings (``serve
    run ... key=value``; a list as comma-separated names)."""
    model, options, config = builder_arguments(args)
    return build_app(model, config=config, **options)


def builder_arguments(args: dict) -> tuple[str, dict, ServerConfig]:
    """``app_builder``'s arguments as build_app's: (model, its other arguments, the config)."""
    config_fields = {f.name: str(f.type) for f in dataclasses.fields(ServerConfig)
                     if f.name not in ("host", "port", "sampling")}  # Serve's proxy has the address
    own, config = {}, {}
    for key, value in args.items():
        if key in _BUILDER_ARGS:
            own[key] = _builder_value(key, value)
        elif key in config_fields:
            config[key] = _typed(value, config_fields[key], key)
        else:
            raise ValueError(f"unknown argument {key!r}: give model, {', '.join(list(_BUILDER_ARGS)[1:])} or a "
                             f"ServerConfig field ({', '.join(config_fields)})")
    if "model" not in own:
        raise ValueError("the model argument is required: model=/path/to/model.bin (on every node)")
    return own.pop("model"), own, ServerConfig(**config)


def _builder_value(key: str, value: Any) -> Any:
    kind = _BUILDER_ARGS[key]
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be {'an integer' if kind is int else 'a string'}, not {value!r}") from None


def _typed(value: Any, kind: str, key: str) -> Any:
    """A ServerConfig value from ``serve run``'s strings (typed values pass as they are)."""
    if not isinstance(value, str):
        return value
    if kind.startswith("Optional[") and kind.endswith("]"):  # e.g. max_concurrent: Optional[int]
        kind = kind[len("Optional["):-1]
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise ValueError(f"{key} must be a number, not {value!r}") from None
    if kind == "bool":
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{key} must be true or false, not {value!r}")
        return value.lower() in ("true", "1", "yes")
    if kind.startswith("Sequence"):
        return tuple(v for v in value.split(",") if v)
    return value


def run(application: serve.Application, *, address: Optional[str] = None, host: str = "127.0.0.1",
        port: int = 8000, on_ready=None) -> None:
    """Deploys ``application`` as ``rwkvcpp`` on the Ray cluster at ``address`` (as ``ray.init``
    takes it; a new local one when there is none) behind Serve's proxy on ``host:port``, calls
    ``on_ready()``, and serves until interrupted; then removes the application (and stops Ray
    if it was started here)."""
    import time

    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(application, name="rwkvcpp", route_prefix="/")
        if on_ready is not None:
            on_ready()
        while True:
            time.sleep(1)
    finally:
        try:
            serve.delete("rwkvcpp")
        finally:
            if started_here:
                serve.shutdown()
                ray.shutdown()
