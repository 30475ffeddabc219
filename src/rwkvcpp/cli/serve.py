"""``rwkvcpp serve [MODEL] [--host 127.0.0.1] [--port 8000]``: an OpenAI-compatible HTTP API.

Endpoints: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /health, a chat
page at / and the API docs at /docs. Needs FastAPI and uvicorn (``pip install fastapi uvicorn``).
Listens on the loopback address only unless --host says otherwise.
"""

from __future__ import annotations

import os
import re
import sys

from . import CommandError, _common


def add_arguments(parser) -> None:
    from ..server.config import ServerConfig

    d = ServerConfig()
    _common.add_model_arguments(parser)
    parser.add_argument("--host", default=d.host,
                        help=f"address to listen on (default {d.host}; 0.0.0.0 exposes the server to the network)")
    parser.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port})")
    access = parser.add_argument_group("access")
    access.add_argument("--api-key", metavar="KEY", action="append",
                        help="require 'Authorization: Bearer KEY' on the API and the docs (repeat for several "
                             "keys; default: the RWKVCPP_API_KEY environment variable, else no key)")
    access.add_argument("--api-key-file", metavar="FILE",
                        help="read keys from FILE, one per line (# starts a comment)")
    access.add_argument("--public-docs", action="store_true", help="serve /docs and /openapi.json without the key")
    access.add_argument("--allowed-host", metavar="NAME", action="append", default=[],
                        help="a Host header name to accept besides localhost while on a loopback address "
                             "(repeatable; refusing others guards against DNS rebinding)")
    access.add_argument("--cors-origin", metavar="ORIGIN", action="append", default=[],
                        help="an origin whose web pages may call the API (repeatable; '*' for any; default none)")
    _common.add_state_argument(parser)
    parser.add_argument("--model-name", metavar="NAME", help="model id shown to clients (default: the file name)")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--parallel", type=int, metavar="N",
                        help="sequences stepped together, each step one pass over the weights for all of them (a "
                             "request's n choices are n sequences); default: 4 per core, between 4 and 32, fewer "
                             f"if their states would not fit in an eighth of the free memory ({d.parallel} here)")
    limits.add_argument("--prompt-chunk", type=int, metavar="N", default=d.prompt_chunk,
                        help="prompt tokens read per step, over all prompts being read, between the other "
                             f"sequences' tokens (default {d.prompt_chunk})")
    limits.add_argument("--max-concurrent", type=int, metavar="N",
                        help="requests running at once (default: --parallel); a waiting request joins at the "
                             "next step once one ends, first come first served")
    limits.add_argument("--max-queue", type=int, metavar="N", default=d.max_queue,
                        help=f"requests that may wait beyond those before new ones get 503 (default {d.max_queue})")
    limits.add_argument("--max-tokens", type=int, metavar="N", default=d.max_tokens_cap,
                        help=f"the most tokens a request may generate (default {d.max_tokens_cap})")
    limits.add_argument("--default-max-tokens", type=int, metavar="N",
                        help=f"tokens generated when a request gives no max_tokens "
                             f"(default {d.default_max_tokens}, or --max-tokens if lower)")
    limits.add_argument("--max-prompt-tokens", type=int, metavar="N", default=d.max_prompt_tokens,
                        help=f"longest prompt in tokens (default {d.max_prompt_tokens})")
    limits.add_argument("--max-connections", type=int, metavar="N", default=d.max_connections,
                        help=f"open connections beyond which requests get 503 (default {d.max_connections})")
    limits.add_argument("--header-timeout", type=float, metavar="S", default=d.header_timeout,
                        help=f"seconds a client may take over a request's headers (default {d.header_timeout:g})")
    limits.add_argument("--body-timeout", type=float, metavar="S", default=d.body_timeout,
                        help=f"seconds a client may take over a request's body (default {d.body_timeout:g})")
    parser.add_argument("--states-dir", metavar="DIR",
                        help="keep saved sessions (POST /v1/states) in DIR; replicas may share it (default: off)")
    limits.add_argument("--max-states", type=int, metavar="N", default=d.max_states,
                        help=f"saved sessions kept, the least recently used deleted beyond (default {d.max_states})")
    limits.add_argument("--cache-mb", type=int, metavar="MB", default=d.cache_bytes >> 20,
                        help=f"memory for cached conversation states, 0 = off (default {d.cache_bytes >> 20})")
    ray = parser.add_argument_group("replicas on Ray Serve (pip install \"rwkvcpp[ray]\"; see docs/SCALING.md)")
    ray.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                     help="serve with Ray Serve on the cluster at ADDRESS, or with no ADDRESS the one RAY_ADDRESS or "
                          "`ray start` on this machine names, else a new local one; --threads is then per replica")
    ray.add_argument("--replicas", type=int, metavar="N", default=1,
                     help="replicas, each with its own model (default 1; threads: this machine's cores / N)")
    ray.add_argument("--max-replicas", type=int, metavar="N",
                     help="scale between --replicas and N replicas with the load (default: a fixed count)")
    parser.add_argument("--access-log", choices=("text", "json", "off"), default=d.access_log,
                        help="a line per request: uvicorn's text (default), a JSON object (time, client, method, "
                             "path, status, duration_ms, bytes, user_agent) or none")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                        help="uvicorn's log level (default info)")


def run(args) -> int:
    from ..server import require_server_dependencies
    from ..server.config import ServerConfig

    try:
        require_server_dependencies(uvicorn=True)
    except ImportError as e:
        raise CommandError(str(e)) from None
    api_keys = _api_keys(args)
    default_max = args.default_max_tokens
    if default_max is None:
        default_max = min(ServerConfig.default_max_tokens, args.max_tokens)
    try:  # ServerConfig checks every setting
        config = ServerConfig(
            host=args.host, port=args.port, api_key=api_keys, model_name=args.model_name,
            public_docs=args.public_docs, allowed_hosts=args.allowed_host, cors_origins=args.cors_origin,
            max_connections=args.max_connections, header_timeout=args.header_timeout,
            body_timeout=args.body_timeout, states_dir=args.states_dir, max_states=args.max_states,
            max_queue=args.max_queue, max_concurrent=args.max_concurrent, parallel=args.parallel,
            prompt_chunk=args.prompt_chunk, max_tokens_cap=args.max_tokens,
            default_max_tokens=default_max, max_prompt_tokens=args.max_prompt_tokens,
            access_log=args.access_log, cache_bytes=args.cache_mb << 20,
            cache_entries=ServerConfig.cache_entries if args.cache_mb else 0,
        )
    except ValueError as e:
        raise CommandError(_as_flags(str(e))) from None
    model = _common.load_model(args)  # says so on stderr when it falls back to the built-in model
    start = _common.load_start_state(model, args.state)
    if args.ray is not None:
        model.close()  # checked here; each replica loads its own
        return _serve_on_ray(args, config, model.path)

    from ..server import create_app
    from ..server.connections import run_server

    app = create_app(model, config, initial_state=start)
    shown = f"[{config.host}]" if ":" in config.host else config.host
    print(f"serving {app.state.engine.model_id} ({model.arch}, {model.n_layer} layers, n_vocab {model.n_vocab}) "
          f"at http://{shown}:{config.port}/  (API: /v1, docs: /docs){'; API key required' if api_keys else ''}",
          file=sys.stderr, flush=True)
    if not config.loopback and not api_keys:
        print("warning: listening beyond this machine without --api-key", file=sys.stderr, flush=True)
    if not run_server(app, config, args.log_level):
        raise CommandError(f"could not serve on {config.host}:{config.port} (see the message above)")
    return 0


def _api_keys(args) -> list[str]:
    """The keys of --api-key, --api-key-file, else RWKVCPP_API_KEY; an empty variable is an error
    rather than a server that silently needs no key."""
    keys = list(args.api_key or [])
    if args.api_key_file:
        try:
            with open(args.api_key_file, encoding="utf-8") as f:
                lines = [line.split("#", 1)[0].strip() for line in f]
        except OSError as e:
            raise CommandError(f"--api-key-file: cannot read {args.api_key_file}: {e.strerror}") from None
        found = [line for line in lines if line]
        if not found:
            raise CommandError(f"--api-key-file: {args.api_key_file} holds no key")
        keys += found
    if not keys and "RWKVCPP_API_KEY" in os.environ:
        value = os.environ["RWKVCPP_API_KEY"].strip()
        if not value:
            raise CommandError("RWKVCPP_API_KEY is set but empty: unset it to serve without a key, or set a key")
        keys.append(value)
    return keys


def _serve_on_ray(args, config, model_path: str) -> int:
    from ..scale.jobs import available_cores
    from ..scale.ray_data import require_ray

    if args.replicas < 1 or (args.max_replicas is not None and args.max_replicas < args.replicas):
        raise CommandError(f"--replicas must be at least 1 and --max-replicas at least --replicas, not "
                           f"{args.replicas} and {args.max_replicas}")
    require_ray()
    from ..scale import serve as ray_serve

    threads = args.threads or max(1, available_cores() // args.replicas)
    application = ray_serve.build_app(model_path, replicas=args.replicas, max_replicas=args.max_replicas,
                                      threads=threads, config=config, tokenizer=args.tokenizer, state=args.state)
    shown = f"[{config.host}]" if ":" in config.host else config.host
    scaling = f"{args.replicas}-{args.max_replicas}" if args.max_replicas else f"{args.replicas}"

    def ready() -> None:
        print(f"serving {os.path.basename(model_path)} on Ray Serve: {scaling} replica(s) x {threads} thread(s) at "
              f"http://{shown}:{config.port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)

    try:
        ray_serve.run(application, address=args.ray or None, host=config.host, port=config.port, on_ready=ready)
    except KeyboardInterrupt:
        pass
    return 0


# ServerConfig's fields as this command's flags, for its error messages.
FLAGS = {
    "port": "--port", "api_key": "--api-key", "allowed_hosts": "--allowed-host", "cors_origins": "--cors-origin",
    "max_connections": "--max-connections", "header_timeout": "--header-timeout", "body_timeout": "--body-timeout",
    "max_states": "--max-states", "max_queue": "--max-queue", "max_concurrent": "--max-concurrent",
    "parallel": "--parallel", "prompt_chunk": "--prompt-chunk",
    "max_tokens_cap": "--max-tokens", "default_max_tokens": "--default-max-tokens",
    "max_prompt_tokens": "--max-prompt-tokens", "cache_bytes": "--cache-mb (in bytes)",
}


def _as_flags(message: str) -> str:
    return re.sub(r"ServerConfig\.(\w+)", lambda m: FLAGS.get(m.group(1), m.group(0)), message)
