"""``rwkvcpp bench [MODEL] [--threads N] [--tokens N] [--prompt N] [--json]``."""

from __future__ import annotations

import json

from . import _common
from ._progress import Progress


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL", nargs="?",
                        help=f"rwkv.cpp .bin model (default: the built-in model, {_common.BUILTIN_NOTE})")
    parser.add_argument("--threads", type=int, default=None, help="worker threads (default: one per core)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens to decode one by one (default 64)")
    parser.add_argument("--prompt", type=int, default=512, help="length of the prompt to ingest (default 512)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args) -> int:
    from ..benchmark import run_benchmark

    model_path = args.model if args.model is not None else _common.builtin_model_path()
    bars = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            bars[stage] = Progress(total, "token" if stage == "decode" else "step", stage)
        bars[stage].update(done - bars[stage].n)

    try:
        result = run_benchmark(model_path, threads=args.threads, decode_tokens=args.tokens,
                               prompt_tokens=args.prompt, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    print(f"model      {result.path}: {result.arch} {result.dtype}, {result.n_layer} x {result.n_embed}, "
          f"vocab {result.n_vocab}")
    print(f"threads    {result.threads} ({result.kernels} kernels)")
    print(f"load       {result.load_seconds * 1000:.0f} ms, resident +{result.rss_bytes / 2**20:.0f} MiB "
          f"(file {result.file_bytes / 2**20:.0f} MiB)")
    print(f"decode     {result.decode_ms_per_token:.2f} ms/token = {result.decode_tokens_per_second:.1f} tokens/s "
          f"over {result.decode_tokens} tokens")
    print(f"bandwidth  {result.bandwidth_gbps:.1f} GB/s measured; {result.bytes_per_token / 1e6:.0f} MB read per "
          f"token -> limit {result.bandwidth_limit_ms:.2f} ms/token; decode reaches {result.percent_of_limit:.0f}%")
    print(f"prompt     {result.prompt_tokens_per_second:.1f} tokens/s over {result.prompt_tokens} tokens")
    print(result.summary())
    return 0
